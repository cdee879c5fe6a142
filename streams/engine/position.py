"""The consumer-position protocol: which fetched records may be processed, in what
batches, and when their offsets are acknowledged.

The rules, each enforced here and each with a test in tests/unit/test_position.py
(and, against the real consumer, tests/fault/test_position_hazards.py):

1. **No partition is processed before its tables are recovered and its position is
   sought.** A partition becomes *ready* only in :meth:`Driver.sought`, called after
   the seek to committed offsets that follows table recovery, with the offset the
   consumer now stands at. Records of a partition that is not ready are not
   processed. (Data-loss risk: a fetch that arrives at the end of recovery, before
   the seek, and is skipped lets the next fetch's acknowledgement commit over the
   hole; what that cost once: docs/design-notes.md, "The consumer position".)
2. **Records of an owned partition that are not processed cause a seek back to the
   first of them**, so a later fetch delivers them again. That covers records of a
   partition not yet ready, the rest of a fetch when a rebalance starts, retry
   records not yet due, and a *hole*: a fetch whose first record is past the next
   offset to process. A hole is only accepted when the broker answers the seek back
   with the same first offset (a real gap: control records, deleted segments). An
   accepted gap of at most :data:`MARKER_GAP` offsets is what transaction markers
   leave (a commit marker after each transaction's records; an aborted record and its
   marker) — one per transaction read under exactly-once — and is logged at DEBUG;
   a larger one (compaction, retention, an aborted batch) at INFO.
3. **A rebalance stops work at the next batch boundary**: before each batch the
   generation is compared with the one the fetch started in; after a change nothing
   more of the fetch is processed, and a batch whose partitions changed hands while
   it ran writes no state and acknowledges nothing (it is processed again by the
   new owner: at most one batch of duplicates).
4. **Offsets are acknowledged per batch** (at most ``BATCH_SIZE`` records, shared
   fairly by the fetch's partitions of every topic), after every service that reads
   a record of the batch finished it — never per fetch (fetches reach 16 MiB per
   partition) and never for a record that was not processed.
5. **One key is never in flight in two pipelines at once**: the driver runs one
   batch at a time — main topics, retry tiers and periodic maintenance alike — and
   each service processes its share of a batch in one pipeline call; only services
   with separate state (a topic several services read) work on a batch at once.
6. **The stored changelog offset is the last record written** (the state store's
   contract, :meth:`streams.engine.ports.StateStore.write`), so recovery re-reads
   nothing a batch wrote.
7. **Under ``PROCESSING_GUARANTEE=exactly_once`` a batch is one Kafka transaction**
   (:mod:`streams.engine.transactions`, steps T1–T6): a batch holds one input
   partition's records; its sends, state and next offset commit together instead of
   rule 4's acknowledgement, or abort together and the batch is read again (rule 2);
   local state is written only after the commit; a fenced partition stops until the
   group assigns it again. Maintenance runs in a transaction per partition too.

This docstring is the consumer-position protocol's one statement (the commit protocol
of one batch is streams/engine/pipeline.py's); the README and the consumer adapter
(streams/faust/consumer.py) link here rather than restate it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from streams.engine import headers as H
from streams.engine import routing
from streams.engine.health import Health
from streams.engine.pipeline import Pipeline, Superseded
from streams.engine.delivery import deliver
from streams.engine.keys import key_partition
from streams.engine.ports import Publisher
from streams.engine.records import TP, Outgoing, Record
from streams.engine.transactions import Transactions

log = logging.getLogger(__name__)

#: The header a rerouted copy carries: the partition and offset it first arrived at.
REROUTED_FROM = "x-rerouted-from"
#: Rule 2: an accepted gap of at most this many offsets is a transaction's marker(s),
#: logged at DEBUG (it follows every transaction read); a larger one at INFO.
MARKER_GAP = 2


class ConsumerPort(Protocol):
    """What the driver needs from the consumer (Faust's, in the worker)."""

    def generation(self) -> int:
        """Changes whenever a rebalance starts or partitions are assigned."""

    def may_process(self) -> bool:
        """Tables recovered and no rebalance in progress."""

    def assigned(self) -> set[TP]: ...

    async def seek(self, tp: TP, offset: int) -> None: ...

    def pause(self, tp: TP) -> None: ...

    def resume(self, tp: TP) -> None: ...

    def acknowledge(self, tp: TP, first: int, last: int) -> None:
        """Offsets ``first..last`` of ``tp`` are done (committed by the consumer later)."""

    def partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic`` (None: not known yet)."""


class Driver:
    def __init__(
        self,
        pipelines: Sequence[Pipeline],
        *,
        batch_size: int,
        health: Health | None = None,
        maintenance_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        publisher: Publisher | None = None,
        transactions: Transactions | None = None,
    ) -> None:
        self.pipelines = list(pipelines)
        #: exactly-once (rule 7): batches run in their partition's transaction; None:
        #: at-least-once (rule 4)
        self.transactions = transactions
        #: sends records that arrived on a partition their key does not map to back to
        #: their key's partition (None: they are processed where they are)
        self.publisher = publisher
        self.batch_size = batch_size
        self.health = health
        self.maintenance_interval = maintenance_interval
        self.clock = clock
        #: topic → pipelines that process its records
        self.routes: dict[str, list[Pipeline]] = {}
        #: retry topic → (its pipeline, tier)
        self.tiers: dict[str, tuple[Pipeline, int]] = {}
        for p in self.pipelines:
            for topic in p.spec.sources:
                self.routes.setdefault(topic, []).append(p)
            for tier, topic in enumerate(p.spec.retry_topics(p.policy.tiers), 1):
                self.routes.setdefault(topic, []).append(p)
                self.tiers[topic] = (p, tier)
        #: ready partitions (rule 1) → next offset to process
        self.next: dict[TP, int] = {}
        self._generation: int | None = None
        #: partitions where a seek back found a first offset past the next one (rule 2)
        self._probe: dict[TP, int] = {}
        #: retry partitions paused until their head record is due: (due, failed at), epoch ms
        self.paused: dict[TP, tuple[int, int]] = {}
        self._last_maintenance = 0.0
        #: seeks back by reason (rule 1: ``not_ready``; rule 2: ``hole``, ``unprocessed``;
        #: retry tiers: ``paused``) — engine_seek_backs_total
        self.seek_backs: Counter[str] = Counter()
        #: records sent on to their key's partition, by topic — engine_rerouted_records_total
        self.rerouted: Counter[str] = Counter()

    @property
    def topics(self) -> set[str]:
        return set(self.routes)

    # -- positions (rule 1) ----------------------------------------------------------

    def reset(self) -> None:
        """A rebalance began: no partition is ready until it is sought again."""
        self.next.clear()
        self._probe.clear()
        self.paused.clear()
        self._generation = None

    def sought(self, generation: int, positions: Mapping[TP, int]) -> None:
        """The consumer stands at ``positions`` (after table recovery and the seek to
        committed offsets): those partitions are ready, from those offsets."""
        if self._generation != generation:
            self.next.clear()
            self._probe.clear()
            self._generation = generation
        for tp, offset in positions.items():
            if tp.topic in self.routes and offset is not None and offset >= 0:
                self.next[TP(*tp)] = offset
        services = sorted({p.spec.name for tp in self.next for p in self.routes[tp.topic]})
        log.info("engine ready: %d partitions of %d topics (%s)", len(self.next),
                 len({tp.topic for tp in self.next}), ", ".join(services) or "nothing assigned")

    # -- a fetch -----------------------------------------------------------------------

    async def on_fetch(self, port: ConsumerPort, fetch: Mapping[TP, Sequence[Record]]) -> int:
        """Process what may be processed of ``fetch`` (records of routed topics only);
        returns records processed."""
        generation = port.generation()
        work: dict[TP, list[Record]] = {}
        for tp, records in fetch.items():
            if records:
                ready = await self._admit(port, TP(*tp), records, generation)
                if ready:
                    work[TP(*tp)] = ready
        done = 0
        upto: dict[TP, int] = {}  # last offset processed per partition
        try:
            for batch in self._rounds(work):
                if port.generation() != generation or not port.may_process():
                    break  # rule 3
                batch = self._due_only(port, batch)
                if not batch:
                    continue
                if not await self._run(port, batch, generation):
                    break
                done += len(batch)
                for r in batch:
                    upto[r.tp] = r.offset
        finally:  # rule 2: what was not processed goes back to the broker
            await self._seek_back(port, {tp: [r for r in recs if r.offset > upto.get(tp, -1)]
                                         for tp, recs in work.items()})
        return done

    async def _admit(self, port: ConsumerPort, tp: TP, records: Sequence[Record],
                     generation: int) -> list[Record]:
        """The records of ``tp`` that may be processed now (rules 1 and 2)."""
        nxt = self.next.get(tp) if self._generation == generation else None
        if nxt is None or not port.may_process():
            if tp in port.assigned():
                await self._seek(port, tp, records[0].offset if nxt is None else min(nxt, records[0].offset),
                                 "not_ready")
            return []
        if tp in self.paused:  # a retry partition fetched in flight while pausing
            await self._seek(port, tp, nxt, "paused")
            return []
        if self.transactions is not None and not self.transactions.owns(tp):
            # rule 7 / T5: fenced here; not fetched again until the group reassigns it
            await self._seek(port, tp, nxt, "stopped")
            port.pause(tp)
            return []
        fresh = [r for r in records if r.offset >= nxt]
        if not fresh:
            return []
        first = fresh[0].offset
        if first > nxt:
            if self._probe.get(tp) == first:
                log.log(logging.DEBUG if first - nxt <= MARKER_GAP else logging.INFO,
                        "%s[%d]: offsets %d..%d are not in the log; continuing at %d",
                        tp.topic, tp.partition, nxt, first - 1, first)
                self._probe.pop(tp, None)
            else:
                self._probe[tp] = first
                await self._seek(port, tp, nxt, "hole")
                return []
        else:
            self._probe.pop(tp, None)
        return fresh

    def _rounds(self, work: dict[TP, list[Record]]) -> Iterator[list[Record]]:
        """Batches of at most ``batch_size`` records across every topic of the fetch,
        each partition taking a fair share (so none starves behind another's backlog).
        Every service processes its topics' records of a batch in one go — one send
        and one state write per service and batch, however many topics the fetch had
        (the full lifecycle touches ten: per-topic batches were mostly a few records
        each, and their fixed cost and round trips dominated)."""
        if self.transactions is not None:
            yield from self._partition_rounds(work)
            return
        cursors = {tp: 0 for tp in work}
        while True:
            live = [tp for tp in work if tp not in self.paused and cursors[tp] < len(work[tp])]
            if not live:
                return
            share = max(1, math.ceil(self.batch_size / len(live)))
            batch: list[Record] = []
            for tp in live:
                take = min(share, self.batch_size - len(batch))
                if take <= 0:
                    break
                start = cursors[tp]
                part = work[tp][start:start + take]
                batch.extend(part)
                cursors[tp] = start + len(part)
            yield batch

    def _partition_rounds(self, work: dict[TP, list[Record]]) -> Iterator[list[Record]]:
        """Rule 7: batches of one partition each (one transaction per input partition),
        at most ``batch_size`` records, the partitions taking turns."""
        cursors = {tp: 0 for tp in work}
        while True:
            live = [tp for tp in work if tp not in self.paused and cursors[tp] < len(work[tp])]
            if not live:
                return
            for tp in live:
                if tp in self.paused:
                    continue
                start = cursors[tp]
                cursors[tp] = start + self.batch_size
                yield work[tp][start:start + self.batch_size]

    def _due_only(self, port: ConsumerPort, batch: list[Record]) -> list[Record]:
        """The batch without retry records that are not due; a retry partition whose
        head is not due is paused until it is (its records go back by rule 2)."""
        now_ms = int(self.clock() * 1000)
        out: list[Record] = []
        stopped: set[TP] = set()
        for r in batch:
            tier_of = self.tiers.get(r.topic)
            if tier_of is None:
                out.append(r)
                continue
            pipeline, tier = tier_of
            if r.tp in stopped or r.tp in self.paused:
                continue
            due = routing.due_at_ms(r, tier, pipeline.policy, now_ms)
            if due > now_ms:
                stopped.add(r.tp)
                failed_at = min(now_ms, H.integer(r.headers, H.FAILED_AT, r.timestamp_ms))
                self.paused[r.tp] = (due, failed_at)
                port.pause(r.tp)
                continue
            out.append(r)
        return out

    async def _run(self, port: ConsumerPort, batch: list[Record], generation: int) -> bool:
        """One batch through every pipeline that reads its records (each its own share,
        concurrently), then its offsets acknowledged (rule 4) — or, exactly-once, the
        batch's transaction committed with its offsets (rule 7)."""
        if self.transactions is not None:
            tp, last = batch[0].tp, batch[-1].offset
            if not self.transactions.owns(tp):
                return False  # stopped (T5) or never started: sought back, not processed
            done = await self.transactions.run(tp, last + 1, lambda: self._process(port, batch, generation))
            if done:
                self.next[tp] = last + 1
                if self.health is not None:
                    self.health.progressed()
            return done
        if not await self._process(port, batch, generation):
            return False
        ranges: dict[TP, tuple[int, int]] = {}
        for r in batch:
            first, last = ranges.get(r.tp, (r.offset, r.offset))
            ranges[r.tp] = (min(first, r.offset), max(last, r.offset))
        for tp, (first, last) in ranges.items():
            port.acknowledge(tp, first, last)
            self.next[tp] = last + 1
        if self.health is not None:
            self.health.progressed()
        return True

    async def _process(self, port: ConsumerPort, batch: list[Record], generation: int) -> bool:
        """The batch through its pipelines; False if it must not be acknowledged."""
        still_owner: Callable[[], bool] = lambda: port.generation() == generation  # noqa: E731
        here = await self._reroute(port, batch)
        shares: dict[int, list[Record]] = {}
        for r in here:
            for p in self.routes[r.topic]:
                shares.setdefault(id(p), []).append(r)
        try:
            decoded: dict = {}  # services reading one topic decode each record once
            await asyncio.gather(*(p.process(shares[id(p)], still_owner=still_owner, decoded=decoded)
                                   for p in self.pipelines if id(p) in shares))
        except Superseded as exc:
            log.info("%s; %d records will be processed again", exc, len(batch))
            return False
        return port.generation() == generation

    async def _maintain_in_transactions(self, port: ConsumerPort, p: Pipeline, partitions: list[int],
                                        generation: int) -> None:
        """Rule 7 for maintenance: each partition's expiry and timeouts in a transaction
        of an input partition of that number this worker owns (no offsets)."""
        assert self.transactions is not None
        for partition in partitions:
            owner = next((tp for tp in sorted(self.next) if tp.partition == partition
                          and tp.topic in p.spec.sources and self.transactions.owns(tp)), None)
            if owner is None or port.generation() != generation:
                continue

            async def work(partition: int = partition) -> bool:
                await p.maintain([partition], still_owner=lambda: port.generation() == generation)
                return port.generation() == generation

            await self.transactions.run(owner, None, work)

    async def _reroute(self, port: ConsumerPort, batch: list[Record]) -> list[Record]:
        """Records on a partition their key does not map to go on to the key's
        partition (same topic, acks awaited) instead of being processed here: the state
        of a key lives in its key's partition, and a copy of an event processed on
        another partition would be processed a second time (docs/design-notes.md,
        "Keys on another partition"). Returns the records
        to process here; the offsets of the rerouted ones are acknowledged with them."""
        if self.publisher is None:
            return batch
        counts: dict[str, int | None] = {}
        here: list[Record] = []
        away: list[Outgoing] = []
        for r in batch:
            count = counts.get(r.topic, -1)
            if count == -1:
                count = counts[r.topic] = port.partition_count(r.topic)
            if (not count or r.key is None or key_partition(r.key, count) == r.partition
                    or H.any_raw(r.header_items)):  # dead-lettered where it is (keys kept raw)
                here.append(r)
            else:
                hdrs = (*r.all_headers(), (REROUTED_FROM, f"{r.partition}:{r.offset}".encode()))
                away.append(Outgoing(r.topic, r.key, r.value, hdrs, key_partition(r.key, count)))
        if away:
            assert self.publisher is not None
            _, rejected = await deliver(self.publisher, away, allowed=self.routes.__contains__, health=self.health)
            if rejected:  # cannot be copied (too large for our producer): processed where they are
                stuck = {(m.key, dict(m.headers)[REROUTED_FROM]) for m in (away[i] for i, _ in rejected)}
                here += [r for r in batch if (r.key, f"{r.partition}:{r.offset}".encode()) in stuck]
            sent = [m for i, m in enumerate(away) if i not in {j for j, _ in rejected}]
            for m in sent:
                self.rerouted[m.topic] += 1
            log.info("%d records on partitions their keys do not map to, sent on to their keys' partitions",
                     len(sent))
        return here

    async def _seek_back(self, port: ConsumerPort, work: Mapping[TP, list[Record]]) -> None:
        assigned = port.assigned()
        for tp, left in work.items():
            if left and tp in assigned:
                await self._seek(port, tp, left[0].offset, "unprocessed")

    async def _seek(self, port: ConsumerPort, tp: TP, offset: int, reason: str) -> None:
        self.seek_backs[reason] += 1
        try:
            await port.seek(tp, offset)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # revoked meanwhile: the new owner starts at the committed offset
            log.info("seek %s[%d] → %d failed: %r", tp.topic, tp.partition, offset, exc)

    def seconds_until_due(self) -> float | None:
        """How long until the first paused retry partition's head is due (None: none
        waits). The consumer bounds its fetch wait by it, so a 0.5 s retry tier is not
        held up by a 1 s fetch timeout."""
        if not self.paused:
            return None
        return max(0.0, (min(due for due, _ in self.paused.values()) - self.clock() * 1000) / 1000)

    def oldest_waiting_ms(self, service: str) -> int | None:
        """When the oldest retry still waiting in ``service``'s paused tiers failed."""
        waiting = [failed for tp, (_, failed) in self.paused.items()
                   if tp.topic in self.tiers and self.tiers[tp.topic][0].spec.name == service]
        return min(waiting) if waiting else None

    # -- between fetches -------------------------------------------------------------

    async def tick(self, port: ConsumerPort) -> None:
        """Resume retry partitions whose head is due; run periodic maintenance."""
        now_ms = int(self.clock() * 1000)
        for tp, (due, _) in list(self.paused.items()):
            if due <= now_ms:
                del self.paused[tp]
                port.resume(tp)
        if not port.may_process() or time.monotonic() - self._last_maintenance < self.maintenance_interval:
            return
        self._last_maintenance = time.monotonic()
        generation = port.generation()
        for p in self.pipelines:
            partitions = sorted({tp.partition for tp in self.next if tp.topic in p.spec.sources})
            if not partitions or port.generation() != generation:
                continue
            try:
                if self.transactions is None:
                    await p.maintain(partitions, still_owner=lambda: port.generation() == generation)
                else:
                    await self._maintain_in_transactions(port, p, partitions, generation)
            except Superseded:
                return
