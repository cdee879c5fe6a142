"""The engine: transport-neutral batch processing (never imports faust).

- :mod:`records` — the only record shapes (:class:`Record`, :class:`Outgoing`, :class:`Delivered`);
- :mod:`errors` — one exception per failure mode, each saying retried or dead-lettered;
- :mod:`ports` — what the engine needs from the outside: a publisher, a state store
  with per-batch transactions, services;
- :mod:`routing` — retry policy, retry and DLQ records, the header trust rules;
- :mod:`delivery` — sending with every ack awaited, within a bounded budget;
- :mod:`pipeline` — the commit protocol of one service over one batch;
- :mod:`position` — the consumer-position protocol: which records of a fetch may be
  processed, batching, offsets acknowledged per batch.
"""
