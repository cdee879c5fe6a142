"""The batch fast path: a service's source records go from Faust's fetch straight
to its :class:`streams.pipeline.Pipeline`, a whole fetch at a time.

Why: Faust hands every record through its per-message machinery (a ``Message``
and an ``Event`` per record, the conductor, a channel queue, the stream iterator,
an ack per record, a task per record in the drain loop): ~500–800 µs of CPU per
event here, 4–10 % of a bare aiokafka loop (field notes, "Throughput").

How: the worker's Faust consumer is replaced by a subclass whose
``_wait_next_records`` — the step where Faust has just received a fetch from its
consumer thread — takes out the records of the routed topics and, per fetch:

1. turns them into :class:`~streams.pipeline.Record` s (no Message, no Event);
2. runs the service's pipeline over them in batches of at most ``BATCH_SIZE``
   (decode, dedup, handlers, every derived/retry/DLQ send acknowledged, keys
   marked — its commit protocol, batch after batch). The bound matters after a
   crash: a backlog fetched as one 7,541-record batch and SIGKILLed mid-way was
   handled again in full (7,541 repeated gateway calls in the chaos kill storm);
   with batches of ``BATCH_SIZE`` at most one batch's calls repeat;
3. only if the consumer generation did not change meanwhile (no rebalance), and
   only for partitions still assigned, advances Faust's own offset bookkeeping
   (read offsets, acked offsets, gaps), which Faust commits as usual.

Everything else — the consumer group, partition assignment, table recovery and
standbys, ``table_route``, the other topics and agents — stays on Faust's normal
path, in the same worker.

A topic that other agents of the worker also consume (``order-state`` reads
``events.order.paid.v1`` too) is **shared**: one consumer group has one offset per
partition, so its records may only be committed once every consumer is done. For a
shared topic step 3 is skipped and the records, already processed, are handed on to
Faust's normal path; the fast service's own agent acknowledges them there at once,
and Faust commits when the other agents have acknowledged them too.

Risks, and what guards them: a rebalance during step 2 → step 3 is skipped, the
records are delivered again (after the seek to committed offsets) and the dedup
table turns them into duplicates. An exception escaping step 2 would stop Faust's
fetcher, so the pipeline routes every failure and retries sends until acked. The
subclass uses private Faust names (``_wait_next_records``, ``_read_offset``,
``_acked``, ``_acked_index``, ``_committed_offset``, ``_n_acked``, ``_add_gap``,
``_commit_every``; faust-streaming 0.15.3, pinned): an upgrade that renames one
fails the fast-path tests (tests/integration/test_fastpath.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from streams.pipeline import Record

log = logging.getLogger(__name__)

Process = Callable[[Sequence[Record]], Awaitable[Any]]


def to_records(records: Sequence[Any]) -> list[Record]:
    """aiokafka ``ConsumerRecord`` s → :class:`Record` s."""
    return [
        Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp or 0, dict(r.headers or ()))
        for r in records
    ]


def shared_topics(app: Any, routes: Mapping[str, Process]) -> set[str]:
    """Routed topics that more than one agent of ``app`` consumes."""
    counts: dict[str, int] = {}
    for agent in app.agents.values():
        for topic in getattr(agent.channel, "topics", ()):
            counts[topic] = counts.get(topic, 0) + 1
    return {t for t in routes if counts.get(t, 0) > 1}


def make_fast_consumer(
    routes: Mapping[str, Process], shared: set[str] = frozenset(), metrics: Any = None,  # type: ignore[assignment]
    batch_size: int = 500,
) -> type:
    """A Faust aiokafka ``Consumer`` that processes ``routes``' topics in batches."""
    from faust.transport.drivers.aiokafka import Consumer
    from faust.types.tuples import ack_lock

    class FastPathConsumer(Consumer):  # type: ignore[misc, valid-type]
        async def _wait_next_records(self, timeout: float) -> Any:
            records, active = await super()._wait_next_records(timeout)
            if not records or self.should_stop:
                return records, active
            fast = {tp: recs for tp, recs in records.items() if tp.topic in routes}
            if not fast:
                return records, active
            if not self.flow_active:  # Faust drops this fetch and seeks back to committed offsets
                return records, active
            await self._process_fast(fast, active)
            # Shared topics' records go on to Faust's normal path (already processed here).
            return {tp: recs for tp, recs in records.items() if tp.topic not in routes or tp.topic in shared}, active

        async def _process_fast(self, fast: Mapping[Any, Sequence[Any]], active: Any) -> None:
            generation = self.app.consumer_generation_id
            todo: dict[Any, list[Any]] = {}
            for tp, recs in fast.items():
                if active is not None and tp not in active:
                    continue
                r_offset = self._read_offset[tp]
                fresh = [r for r in recs if r_offset is None or r.offset >= r_offset]
                if fresh:
                    todo[tp] = fresh
            by_topic: dict[str, list[Any]] = {}
            for tp, recs in todo.items():
                by_topic.setdefault(tp.topic, []).extend(recs)
            for topic, recs in by_topic.items():
                for start in range(0, len(recs), batch_size):
                    await routes[topic](to_records(recs[start:start + batch_size]))
                if metrics is not None:
                    metrics.fast_path_records.labels(topic).inc(len(recs))
            if self.app.consumer_generation_id != generation or self.app.rebalancing:
                log.info("fast path: rebalance during a batch; %d records will be delivered again",
                         sum(map(len, todo.values())))
                return
            assignment = self.assignment()
            for tp, recs in todo.items():
                if tp in assignment and tp.topic not in shared:
                    await self._ack_offsets(tp, [r.offset for r in recs])
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()

        async def _ack_offsets(self, tp: Any, offsets: list[int]) -> None:
            """What Faust's drain loop + ``Consumer.ack`` do per message, per batch."""
            previous = self._read_offset[tp]
            expected = previous + 1 if previous is not None else None
            for offset in offsets:  # offsets skipped by the broker (e.g. control records)
                if expected is not None and offset > expected:
                    await self._add_gap(tp, expected, offset)
                expected = offset + 1
            with ack_lock:
                committed = self._committed_offset[tp]
                index = self._acked_index[tp]
                new = [o for o in offsets if (committed is None or o >= committed) and o not in index]
                index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
            self._read_offset[tp] = offsets[-1]

    return FastPathConsumer
