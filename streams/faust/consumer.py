"""The engine's consumer: Faust's aiokafka ``Consumer`` with the engine's topics
processed by the driver (:class:`streams.engine.position.Driver`) — a batch at a
time, never through Faust's per-message path — and the consumer-position protocol's
hooks. It is the driver's :class:`~streams.engine.position.ConsumerPort`.

Rule: this module names no private Faust or aiokafka attribute; each one it relies on
is behind a function or base class of :mod:`streams.faust.compat` (the one place for
them, each tested by tests/unit/test_faust_compat.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from faust.types import TP as FaustTP

from streams.engine.records import TP
from streams.faust.compat import (
    acknowledge_range, commit_due, consumer_thread_class, faust_consumer_class, move_recovery_offsets, to_records,
)

log = logging.getLogger(__name__)

_FaustConsumer: Any = faust_consumer_class()


def engine_consumer_class(driver: Any, *, fetch_max_wait: float, end_offsets_from_fetch: bool | None,
                          empty_wait: float, loader: Any = None, read_committed: bool = False) -> type:
    """An :class:`EngineConsumer` for ``driver``: its consumer thread waits at most
    ``fetch_max_wait`` s for a fetch and takes end offsets as ``end_offsets_from_fetch``
    says (:func:`~streams.faust.compat.consumer_thread_class`); a rebalance waits at most
    ``empty_wait`` s for the batch in flight; ``loader`` (a
    :class:`streams.faust.recovery.BulkLoader`) fills the stores in table recovery;
    ``read_committed`` (exactly-once) reads only committed records, changelogs included."""
    thread_class = consumer_thread_class(fetch_max_wait=fetch_max_wait,
                                         end_offsets_from_fetch=end_offsets_from_fetch,
                                         read_committed=read_committed)
    return type("EngineConsumer", (EngineConsumer,), {
        "__module__": __name__,  # its Faust logger (else "abc", from its metaclass), quiet in the worker
        "engine": driver, "engine_topics": frozenset(driver.topics), "engine_loader": loader,
        "engine_empty_wait": empty_wait, "engine_thread_class": thread_class,
    })


class EngineConsumer(_FaustConsumer):  # type: ignore[misc, valid-type]
    """Configured by :func:`engine_consumer_class` (the class attributes below)."""

    engine: Any  #: the driver
    engine_topics: frozenset[str]  #: the topics the driver processes
    engine_loader: Any = None
    engine_empty_wait: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: one engine step at a time: a fetch, a tick, or the seek after recovery
        self.engine_lock = asyncio.Lock()
        self._last_committed: dict[Any, int | None] = {}

    # -- ConsumerPort ----------------------------------------------------------------
    def generation(self) -> Any:
        return (self.app.rebalancing_count, self.app.consumer_generation_id)

    def may_process(self) -> bool:
        return bool(self.flow_active and not self.app.rebalancing and not self.should_stop)

    def assigned(self) -> set[TP]:
        return {TP(tp.topic, tp.partition) for tp in self.assignment()}

    def pause(self, tp: TP) -> None:
        self.pause_partitions({self._tp(tp)})

    def resume(self, tp: TP) -> None:
        if self._tp(tp) in self.assignment():
            self.resume_partitions({self._tp(tp)})

    def acknowledge(self, tp: TP, first: int, last: int) -> None:
        real = self._tp(tp)
        acknowledge_range(self, real, first, last)
        monitor = self.app.monitor
        if monitor is not None and monitor.stream_inbound_time is not None:
            monitor.stream_inbound_time[real] = time.monotonic()

    def partition_count(self, topic: str) -> int | None:
        count = self.topic_partitions(topic)
        return int(count) if count else None

    def _tp(self, tp: Any) -> Any:
        return FaustTP(tp.topic, tp.partition)  # Faust's own sets hold only its TP type

    # -- a fetch (compat's FaustConsumer calls these from Faust's fetch loop) ----------
    async def before_fetch(self, timeout: float) -> float:
        """The driver's maintenance (due retries, flushes), then the fetch's timeout:
        no longer than until the next retry falls due."""
        async with self.engine_lock:
            await self._guarded(self.engine.tick(self), "maintenance")
        due = self.engine.seconds_until_due()
        if due is not None:  # wake up for the next retry that falls due
            timeout = max(0.005, min(timeout, due))
        return timeout

    async def take_fetched(self, records: Any) -> Any:
        """The engine's topics' records go to the driver; the rest are left for Faust."""
        ours = {tp: recs for tp, recs in records.items() if tp.topic in self.engine_topics}
        if not ours:
            return records
        async with self.engine_lock:
            if self.flow_active:  # else Faust seeks back to committed offsets next
                await self._guarded(self.engine.on_fetch(self, {TP(tp.topic, tp.partition): to_records(recs)
                                                                for tp, recs in ours.items()}), "a fetch")
        if commit_due(self):
            await self.commit()
        return {tp: recs for tp, recs in records.items() if tp.topic not in self.engine_topics}

    async def _guarded(self, step: Any, what: str) -> None:
        """An exception escaping here would stop Faust's fetcher for good (the
        worker then exits): log it and go on; the driver has already sought back
        what it did not process, so the records come again."""
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("engine: %s failed; its unprocessed records will be fetched again", what)
            await asyncio.sleep(1.0)

    # -- recovery, seeks and rebalances ------------------------------------------------
    async def highwaters(self, *partitions: Any) -> Mapping[Any, int]:
        """Faust asks for the changelogs' end offsets first thing in a recovery: the
        bulk loader (:mod:`streams.faust.recovery`) fills the stores up to them, and
        Faust's recovery offsets are moved along, so it replays nothing."""
        ends = await super().highwaters(*partitions)
        loader = self.engine_loader
        ours = {tp: int(end) for tp, end in ends.items() if loader is not None and tp.topic in loader.changelogs}
        if ours:
            move_recovery_offsets(self.app, await loader.load(ours))
        return ends

    async def seek_to_committed(self) -> Mapping[Any, int]:
        offsets = await super().seek_to_committed()
        self._last_committed = dict(offsets)
        return offsets

    async def perform_seek(self) -> None:
        """Faust's seek to committed offsets (after table recovery), then rule 1: the
        engine's partitions are ready from where the consumer now stands. A partition
        with no committed offset is sought to its first offset explicitly —
        aiokafka's ``seek_to_committed`` leaves such a position wherever the fetcher
        had got to, and a fetch read before the seek would be skipped
        (docs/design-notes.md, "The consumer position")."""
        async with self.engine_lock:
            generation = self.generation()
            self._last_committed = {}
            transactions = self.engine.transactions
            if transactions is not None:  # exactly-once T1: producers (fencing) before offsets are read
                await transactions.assign([TP(tp.topic, tp.partition) for tp in self.assignment()
                                           if tp.topic in self.engine_topics])
            await super().perform_seek()
            ours = [tp for tp in self.assignment() if tp.topic in self.engine_topics]
            positions: dict[TP, int] = {}
            fresh = [tp for tp in ours if not (self._last_committed.get(tp) or 0) > 0]
            earliest = await self.earliest_offsets(*fresh) if fresh else {}
            for tp in ours:
                committed = self._last_committed.get(tp)
                if committed is not None and committed > 0:
                    positions[TP(tp.topic, tp.partition)] = int(committed)
                else:
                    start = int(earliest.get(tp) or 0)
                    await self.seek(tp, start)
                    positions[TP(tp.topic, tp.partition)] = start
            self.engine.sought(generation, positions)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.engine.reset()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        self.engine.reset()
        await super().on_partitions_assigned(assigned, generation_id)

    async def wait_empty(self) -> None:
        """A rebalance or shutdown waits (at most ``engine_empty_wait`` s) for the
        engine's batch in flight, which stops at its next batch boundary (rule 3)."""
        try:
            await asyncio.wait_for(self.engine_lock.acquire(), self.engine_empty_wait)
        except asyncio.TimeoutError:
            log.warning("a batch still running after %.0fs; its records will be processed again",
                        self.engine_empty_wait)
        else:
            self.engine_lock.release()
        await super().wait_empty()
