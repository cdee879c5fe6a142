"""Helpers that start and drive the real processes, shared by ``tests/`` and ``bench/``.

``bench/`` never imports ``tests/`` (tests/unit/test_layout_rules.py); what both need lives
here, beside the app rather than inside its test suite:

- :mod:`harness.worker` — ``faust -A streams worker`` as a subprocess (:class:`WorkerProcess`),
  its metrics (:func:`metric_value`) and a ``/health`` probe for a whole run;
- :mod:`harness.orders` — the order service's processes (serve, relay) and an HTTP client;
- :mod:`harness.gateway` — a local SMS-gateway stand-in with scripted answers;
- :mod:`harness.kafka` — produce, read and committed-offset helpers (plain aiokafka) that
  wait for conditions, never for quiet periods;
- :mod:`harness.outbox_waits` — waits on the order service's outbox;
- :mod:`harness.events` — the JSON shapes of the events other services send;
- :mod:`harness.reference` — the reference model of the services (standard library only),
  which the differential test and the chaos runs compare the worker's tables with.

The brokers themselves are started by :mod:`streams.broker` (``python -m streams.broker``).
Helpers only the tests use (hostile input, fault injection) stay in ``tests/support/``.
"""
