"""The commit protocol: one service, one batch of records, nothing acknowledged early.

:meth:`Pipeline.process` runs these steps over a batch (records of the service's
source topics or of its own retry tiers; the caller acknowledges the batch's
offsets only after it returns):

1. **Decode and validate** each record once, by the topic it came from (for a retry
   record: the source topic it names, under the trust rules of
   :mod:`streams.engine.routing`). Failure → ``<service>.dlq`` with
   ``decode_error`` / ``validation_error``; a record with a header key that is not
   UTF-8 is a ``decode_error`` (its headers are kept, that key as ``x-raw-key:<hex>``).
2. **Deduplicate** (services with a dedup table): one multi-get per partition. A key
   processed before — not expired relative to this record's time — counts as
   ``duplicate``; so does a key seen earlier in the same batch.
3. **Handle**: the service judges every fresh event against its state (reads and
   writes go to per-partition :class:`~streams.engine.ports.Transaction` s, kept in
   memory), does its side effects (the SMS gateway gets the idempotency key) and
   names its derived records. A handler failure never escapes: retryable →
   ``<service>.retry.<n>``; otherwise, or with no retry left, → the DLQ.
4. **Send** every derived record, retry record and dead letter of the batch and
   **await every broker ack** (:func:`~streams.engine.delivery.deliver`). A message
   that can never be sent dead-letters its event instead (``too_large`` …); a dead
   letter too large for the DLQ is shrunk to its headers, digests and the first bytes
   of its key and value; a dead letter that still cannot be sent is sent again after a
   backoff — the batch does not return, so its offsets are not acknowledged.
5. **Write state**: the dedup markers of the events that succeeded, and every
   transaction's writes, made durable by
   :meth:`~streams.engine.ports.StateStore.write` (its contract: changelog records
   acknowledged, then one local write batch per partition, then the persisted
   offset — the last record written).
6. Return; the caller then **acknowledges the batch's offsets**.

Data-loss risk: writing state (5) before the acks of 4 loses messages on SIGKILL —
the marker survives, the derived record dies in the producer buffer, the replayed
input is skipped as a duplicate. Acknowledging offsets (6) before 5 can only cause
duplicates; a crash between 4 and 5 repeats at most this batch's side effects
(≤ ``BATCH_SIZE`` per crash). The measurements behind this order:
docs/design-notes.md, "The commit protocol".

This docstring is the commit protocol's one statement: the README,
streams/engine/ports.py and streams/faust/stores.py link here rather than restate it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol

from streams.engine import headers as H
from streams.engine import routing
from streams.engine.delivery import deliver
from streams.engine.errors import DecodeError, StreamsError, TooLarge, TransientError, classify
from streams.engine.health import Health
from streams.engine.ports import INDEX_PREFIX, BatchState, Indexer, Publisher, StateStore, Transaction
from streams.engine.records import Outgoing, Record
from streams.engine.streamtime import STREAM_TIME_KEY, StreamTime
from streams.engine.topology import ServiceSpec, dlq_topic
from streams.engine.transactions import current, doomed

log = logging.getLogger(__name__)

SUCCESS, DUPLICATE, RETRY, DEAD_LETTER, PARKED = "success", "duplicate", "retry", "dead_letter", "parked"
#: Index entries (TTL, timeouts) handled per table partition per maintenance tick.
MAINTENANCE_LIMIT = 5_000


class Counts(Protocol):
    """Where outcomes are counted (Prometheus in the worker, a Counter in tests)."""

    def processed(self, service: str, type_name: str, status: str, n: int) -> None: ...
    def retried(self, service: str, tier: int) -> None: ...
    def dead_lettered(self, service: str, reason: str) -> None: ...
    def batch(self, service: str, size: int, seconds: float, latencies: Sequence[float]) -> None: ...
    def send_retried(self, service: str, n: int) -> None: ...
    def expired(self, table: str, n: int) -> None: ...


@dataclass(slots=True, eq=False)
class Item:
    """One record of the batch and what became of it."""

    record: Record
    type_name: str
    #: where a retry record's event first arrived (None for a source record: itself)
    origin: routing.Origin | None = None
    message: Any = None
    key: bytes = b""
    #: the record's time: its timestamp as believed (streams.engine.streamtime, rule 4)
    time_ms: int = 0
    status: str | None = None
    error: StreamsError | None = None
    out: list[Outgoing] = field(default_factory=list)

    @property
    def partition(self) -> int:
        return self.record.partition

    def succeed(self, *out: Outgoing, status: str = SUCCESS) -> None:
        self.status = status
        self.out.extend(out)

    def fail(self, error: BaseException) -> None:
        self.error = classify(error)
        self.status = None
        self.out.clear()


class Service(Protocol):
    """A consuming service's logic, over decoded events and state transactions."""

    spec: ServiceSpec
    #: table of processed idempotency keys (the pipeline deduplicates), or None
    dedup_table: str | None

    def type_of(self, topic: str) -> str:
        """The event type name of ``topic``'s records (a metrics label)."""

    def decode(self, topic: str, record: Record) -> Any:
        """``record`` (consumed from, or retried for, ``topic``) → a validated message;
        raises :class:`DecodeError` / :class:`ValidationFailed`."""

    def decoder(self, topic: str) -> Hashable:
        """What decodes ``topic`` (e.g. the event class): services whose decoders are
        equal share one decoded message per record of a batch they both read."""

    async def handle(self, items: Sequence[Item], batch: "Batch") -> None:
        """Settle every item: :meth:`Item.succeed` (with derived records) or
        :meth:`Item.fail`. Reads and writes go through ``batch.tx(table, partition)``."""

    async def maintain(self, batch: "Batch", partitions: Sequence[int]) -> None:
        """Periodic work on owned partitions (timeouts, expiry), found by time index."""

    def indexers(self) -> Mapping[str, Indexer]:
        """How each of the service's own tables (not the dedup table) derives its local
        index entries; recovery rebuilds them with it."""


class Batch:
    """What a handler sees of the batch: transactions, the clock, extra records.

    ``now_ms`` is the process clock (headers, letters); a decision that depends on
    time asks :meth:`time` of its partition (:mod:`streams.engine.streamtime`)."""

    def __init__(self, pipeline: "Pipeline", state: BatchState, now_ms: int) -> None:
        self.pipeline = pipeline
        self.state = state
        self.now_ms = now_ms
        #: records not tied to an item of this batch (dead letters of parked events …)
        self.extra: list[Outgoing] = []
        self.tally: Counter[tuple[str, str]] = Counter()

    def tx(self, table: str, partition: int) -> Transaction:
        return self.state.tx(table, partition)

    def time(self, partition: int) -> int:
        """The decision time of ``partition``: its stream time + monotonic quiet time
        (streamtime rules 2–3). A partition with none yet starts at the process clock."""
        times = self.pipeline.times
        now = times.now(partition)
        if now is None:
            times.observe(partition, self.now_ms)
            now = self.now_ms
        return now

    def known_time(self, partition: int) -> int | None:
        """:meth:`time`, or None where no stream time is known (nothing expires there)."""
        return self.pipeline.times.now(partition)

    def count(self, type_name: str, status: str, n: int = 1) -> None:
        self.tally[(type_name, status)] += n

    def dead_letter(self, record: Record, error: StreamsError, type_name: str) -> None:
        """Dead-letter an event this batch did not consume (a parked event's stored
        record): always the DLQ, never a retry."""
        p = self.pipeline
        origin = routing.Origin(record.topic, record.partition, record.offset, 0)
        self.extra.append(routing.dead_letter(p.spec.name, record, origin, error, 1, self.now_ms))
        self.count(type_name, DEAD_LETTER)
        p.counts.dead_lettered(p.spec.name, error.dlq_reason)


class Superseded(Exception):
    """The batch's partitions changed hands before its state was written: nothing is
    written and nothing acknowledged; the new owner processes the records again."""


class Pipeline:
    def __init__(
        self,
        service: Service,
        *,
        publisher: Publisher,
        store: StateStore,
        counts: Counts,
        policy: routing.RetryPolicy,
        allowed: Callable[[str], bool],
        ttl_ms: int,
        health: Health | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        send_backoff: float = 0.5,
    ) -> None:
        self.service = service
        self.spec = service.spec
        self.publisher = publisher
        self.store = store
        self.counts = counts
        self.policy = policy
        self.allowed = allowed
        self.ttl_ms = ttl_ms
        self.health = health
        self.clock = clock
        self.send_backoff = send_backoff
        #: stream time per partition (every time-dependent decision; streamtime rules)
        self.times = StreamTime(wall=clock, monotonic=monotonic)
        #: the table whose partitions keep the stream time (STREAM_TIME_KEY): the first
        #: beside the dedup table. A service with only a dedup table keeps it in memory:
        #: its one time decision, the TTL sweep, then waits after a restart for the first
        #: record, which only keeps markers longer (and writes nothing per batch).
        timed = [t for t in self.spec.tables if t != service.dedup_table]
        self._time_table = timed[0] if timed else None
        self._types: dict[str, str] = {}
        self._retry_topics = frozenset(self.spec.retry_topics(policy.tiers))
        #: exactly-once T7: (topic, partition, offset) of source records whose derived or
        #: retry record the broker refused for good, with that refusal, until re-read
        self.refused: dict[tuple[str, int, int], StreamsError] = {}

    # -- the protocol ------------------------------------------------------------------

    async def process(self, records: Sequence[Record], *,
                      still_owner: Callable[[], bool] = lambda: True,
                      decoded: dict[tuple[int, Hashable], Any] | None = None) -> Counter[str]:
        """Steps 1–5 for ``records``; the caller acknowledges their offsets afterwards.
        Raises :class:`Superseded` (nothing written) if ``still_owner()`` turns false
        before the state is written. ``decoded`` is shared by the services that process
        the same batch: a record is decoded once."""
        started = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        batch = Batch(self, BatchState(self.store), now_ms)
        self._load_times(batch, {r.partition for r in records})
        memo = {} if decoded is None else decoded
        items = [self._decode(r, now_ms, memo) for r in records]  # 1
        if self.refused:
            self._recall_refusals(items)
        live = [i for i in items if i.error is None]
        if self.service.dedup_table:
            self._dedup(live, batch)  # 2
        fresh = [i for i in live if i.status is None]
        await self._handle(fresh, batch)  # 3
        self._save_times(batch, {r.partition for r in records})
        await self._send(items, batch)  # 4
        if self.service.dedup_table:
            self._mark(items, batch)
        if not still_owner():
            raise Superseded(f"{self.spec.name}: partitions changed hands during a batch")
        await self._flush(batch)  # 5
        return self._observe(items, batch, started)

    def _recall_refusals(self, items: list[Item]) -> None:
        """T7, on the batch's re-read: an event whose output the broker refused for good
        in the aborted transaction fails with that refusal now, before its handler runs
        (no second gateway call), so step 4 sends its dead letter in this transaction."""
        for item in items:
            r = item.record
            refusal = self.refused.get((r.topic, r.partition, r.offset))  # kept: this batch may abort too
            if refusal is not None and item.error is None:
                item.error = refusal

    def indexers(self) -> dict[str, Indexer]:
        """Every table of this pipeline's service → how its index entries derive from its
        values: the dedup table's from here, the service's own tables' from the service."""
        out = dict(self.service.indexers())
        if self.service.dedup_table:
            out[self.service.dedup_table] = Indexer(self.dedup_index, self.dedup_index_many)
        return out

    def dedup_index_many(self, records: Sequence[Any]) -> list[bytes]:
        """:meth:`dedup_index` of a whole fetch of changelog records (``.key``, ``.value``)."""
        try:
            return [INDEX_PREFIX + int(r.value).to_bytes(8, "big") + r.key for r in records
                    if r.value is not None and r.key[:1] != b"\x00"]
        except (ValueError, OverflowError):  # a value that is not a time: one by one
            return [i for r in records if r.value is not None for i in self.dedup_index(r.key, r.value)]

    def dedup_index(self, key: bytes, value: bytes) -> tuple[bytes, ...]:
        """The local index entry of a dedup marker (rebuilt by recovery: markers come
        back from the changelog, their index entries are never in it)."""
        if key[:1] == b"\x00":  # an index entry, or the stream time
            return ()
        try:
            return (INDEX_PREFIX + int(value).to_bytes(8, "big") + key,)
        except (ValueError, OverflowError):
            return ()

    async def maintain(self, partitions: Sequence[int], *,
                       still_owner: Callable[[], bool] = lambda: True) -> int:
        """Periodic work on ``partitions``: the dedup TTL sweep and the service's own;
        the same send-then-write order as a batch. Returns state changes written."""
        batch = Batch(self, BatchState(self.store), int(self.clock() * 1000))
        # every tick: another owner may have moved a partition's stream time meanwhile
        # (taken with its quiet time counted from now, not from this process's last sight)
        self._load_times(batch, partitions)
        if self.service.dedup_table:
            self._sweep(batch, partitions)
        await self.service.maintain(batch, partitions)
        await self._send([], batch)
        if not still_owner():
            raise Superseded(f"{self.spec.name}: partitions changed hands during maintenance")
        written = await self._flush(batch)
        self._observe([], batch, None)
        return written

    # -- steps -------------------------------------------------------------------------

    def _type_of(self, topic: str) -> str:
        found = self._types.get(topic)
        if found is None:
            found = self._types[topic] = self.service.type_of(topic)
        return found

    def _decode(self, record: Record, now_ms: int, memo: dict[tuple[int, Hashable], Any]) -> Item:
        topic = record.topic
        item = Item(record, self._type_of(topic))
        ts = record.timestamp_ms
        p = record.partition
        item.time_ms = self.times.believe(p, ts)
        if not self.allowed(topic):
            # Records of others move stream time; ours (derived events, commands between
            # stages, retries) carry the writing worker's wall clock and do not.
            self.times.observe(p, item.time_ms)
        try:
            if record.header_items and H.any_raw(record.header_items):
                raise DecodeError("a header key is not UTF-8: "
                                  + ", ".join(repr(H.raw_key(k)[:64]) for k, _ in record.header_items
                                              if H.is_raw(k)))
            if topic in self._retry_topics:  # ours: headers trusted as far as routing allows
                item.origin = routing.origin_of(record, self.spec, self.policy, now_ms)
                topic = item.origin.topic
                item.type_name = self._type_of(topic)
            ref = (id(record), self.service.decoder(topic))
            found = memo.get(ref)
            if found is None:
                try:
                    found = memo[ref] = self.service.decode(topic, record)
                except StreamsError as exc:
                    found = memo[ref] = exc
            if isinstance(found, StreamsError):
                raise found
            item.message = found
            item.key = record.key or b""
        except StreamsError as exc:
            item.error = exc
        return item

    def _dedup(self, items: list[Item], batch: Batch) -> None:
        table = self.service.dedup_table
        assert table is not None
        by_partition: dict[int, list[Item]] = {}
        for item in items:
            by_partition.setdefault(item.partition, []).append(item)
        for partition, group in by_partition.items():
            markers = batch.tx(table, partition).get_many(i.key for i in group)
            seen: set[bytes] = set()
            for item, marker in zip(group, markers):
                fresh = marker is None or item.time_ms - int(marker) > self.ttl_ms
                if not fresh or item.key in seen:
                    item.status = DUPLICATE
                else:
                    seen.add(item.key)

    async def _handle(self, items: list[Item], batch: Batch) -> None:
        if not items:
            return
        try:
            await self.service.handle(items, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a handler: every unsettled event is retried
            log.exception("%s: handler failed for a batch of %d", self.spec.name, len(items))
            for item in items:
                if item.status is None and item.error is None:
                    item.fail(exc)
        for item in items:
            if item.status is None and item.error is None:
                item.fail(TransientError("the handler left the event unsettled"))

    def _route(self, item: Item, now_ms: int) -> Outgoing:
        """A failed item's retry record or dead letter."""
        error, origin, spec = item.error, item.origin, self.spec
        assert error is not None
        if origin is None:  # a source record, or a retry record that could not be placed
            origin = routing.Origin(item.record.topic, item.partition, item.record.offset,
                                    spec.retry_tier_of(item.record.topic) or 0)
        attempts = origin.attempts + 1
        delay = self.policy.delay_after(attempts) if error.retryable else None
        where = {"topic": item.record.topic, "partition": item.partition, "offset": item.record.offset,
                 "key": (item.record.key or b"")[:128].decode("utf-8", "replace"), "event_type": item.type_name}
        if delay is not None:
            item.status = RETRY
            self.counts.retried(spec.name, attempts)
            log.info("%s: retry %d of %s[%d]@%d in %.1fs: %s", spec.name, attempts, item.record.topic,
                     item.partition, item.record.offset, delay, error, extra={**where, "attempt": attempts})
            return routing.retry_record(spec.name, item.record, origin, error, attempts, delay, now_ms)
        reason = "max_attempts" if error.retryable else error.dlq_reason
        item.status = DEAD_LETTER
        self.counts.dead_lettered(spec.name, reason)
        log.warning("%s: dead-lettered %s[%d]@%d: %s (%s)", spec.name, item.record.topic,
                    item.partition, item.record.offset, reason, error, extra={**where, "reason": reason})
        return routing.dead_letter(spec.name, item.record, origin, error, attempts, now_ms, reason=reason)

    async def _send(self, items: list[Item], batch: Batch) -> None:
        """Step 4: every record of the batch acknowledged; what can never be sent is
        replaced by a dead letter (and a dead letter too large by a shrunk one)."""
        messages: list[Outgoing] = []
        owners: list[Item | None] = []
        # failed-at and not-before are taken after the handlers ran, not at the batch's
        # start: a retry never runs before its delay has passed since the failed call
        # (docs/design-notes.md, "Retry timing")
        failed_ms = int(self.clock() * 1000)
        for item in items:
            if item.error is not None:
                messages.append(self._route(item, failed_ms))
                owners.append(item)
            else:
                messages.extend(item.out)
                owners.extend([item] * len(item.out))
        messages.extend(batch.extra)
        owners.extend([None] * len(batch.extra))
        dlq = dlq_topic(self.spec.name)
        blocked_wait = self.send_backoff
        while messages:
            _, rejected = await deliver(
                self.publisher, messages, allowed=self.allowed, health=self.health,
                backoff=self.send_backoff,
                on_retry=lambda n: self.counts.send_retried(self.spec.name, n),
            )
            again: list[Outgoing] = []
            again_owners: list[Item | None] = []
            rerouted: set[int] = set()
            refused_in_txn: StreamsError | None = None
            blocked: list[tuple[Outgoing, Item | None]] = []
            for index, error in rejected:
                message, owner = messages[index], owners[index]
                if message.topic == dlq:
                    if isinstance(error, TooLarge) and not routing.is_shrunk(message):
                        again.append(routing.shrink_letter(message))
                        again_owners.append(owner)
                        continue
                    # A dead letter is never given up: "dead-lettered" means "in the DLQ".
                    # The batch (so its offsets) waits and the letter is sent again;
                    # /health reports the failing sends once they outlast the budget.
                    log.error("%s: a dead letter cannot be sent (%s); the batch waits and sends it again "
                              "(%s[%d], source offset %s)", self.spec.name, error, message.topic,
                              message.partition if message.partition is not None else -1,
                              dict(message.headers).get("x-source-offset", b"?").decode(errors="replace"))
                    if self.health is not None:
                        self.health.send_failed(error)
                    blocked.append((message, owner))
                    continue
                if owner is None:
                    log.error("%s: a record for %s could not be sent: %s", self.spec.name, message.topic, error)
                    continue
                if id(owner) in rerouted:
                    continue
                if current() is not None:
                    # T7: the refused send doomed this transaction, so the dead letter
                    # cannot ride in it: remember the refusal, abort, and the re-read
                    # batch dead-letters the event in the next one (_recall_refusals).
                    self._remember_refusal(owner.record, error)
                    refused_in_txn = refused_in_txn or error
                    continue
                # A derived or retry record of the event can never be sent: dead-letter
                # the event instead (the error is permanent, so _route picks the DLQ).
                rerouted.add(id(owner))
                owner.out.clear()
                owner.error = error
                again.append(self._route(owner, failed_ms))
                again_owners.append(owner)
            if refused_in_txn is not None:
                doomed(refused_in_txn)  # T7: abort; the re-read dead-letters the refused events
            if blocked:
                await asyncio.sleep(blocked_wait)
                blocked_wait = min(5.0, blocked_wait * 2)
                again += [m for m, _ in blocked]
                again_owners += [o for _, o in blocked]
            messages, owners = again, again_owners

    #: T7's memory is bounded: refusals of partitions that moved away are never re-read here
    REFUSALS_KEPT = 10_000

    def _remember_refusal(self, record: Record, error: StreamsError) -> None:
        if len(self.refused) >= self.REFUSALS_KEPT:
            self.refused.pop(next(iter(self.refused)))
        self.refused[(record.topic, record.partition, record.offset)] = error

    def _mark(self, items: list[Item], batch: Batch) -> None:
        """The dedup markers of the batch's successes (sent only after step 4)."""
        table = self.service.dedup_table
        assert table is not None
        for item in items:
            if item.status == SUCCESS and item.error is None:
                tx = batch.tx(table, item.partition)
                # Stamped with the record's time, but never older than now: an old
                # copy's marker must still hold for the same event produced now, or
                # that event is processed twice (docs/design-notes.md, "Dedup markers").
                marked = max(item.time_ms, batch.now_ms)
                tx.set(item.key, str(marked).encode())
                # Indexed by the marker's time (a changed DEDUP_TTL applies to it too);
                # local only: recovery rebuilds this index from the markers' values.
                tx.schedule(marked, item.key, durable=False)

    def _sweep(self, batch: Batch, partitions: Sequence[int]) -> None:
        """Dedup TTL: markers older than the partition's decision time − TTL go (its
        stream time, streamtime rule 3), found through the time index (cost: the
        expired keys, not the table)."""
        table = self.service.dedup_table
        assert table is not None
        removed = 0
        for partition in partitions:
            watermark = batch.known_time(partition)
            if watermark is None:
                continue  # no stream time on this partition: nothing expires
            tx = batch.tx(table, partition)
            due = tx.due(watermark - self.ttl_ms, MAINTENANCE_LIMIT)
            markers = tx.get_many(key for _, key in due)
            for (at, key), marker in zip(due, markers):
                tx.unschedule(at, key)
                if marker is not None and int(marker) + self.ttl_ms <= watermark:
                    tx.delete(key)
                    removed += 1
        if removed:
            self.counts.expired(table, removed)
            log.info("%s: TTL sweep removed %d keys", table, removed)

    @property
    def watermarks(self) -> dict[int, int]:
        """Stream time per partition (the largest believed record time)."""
        return self.times.as_dict()

    def _load_times(self, batch: Batch, partitions: Iterable[int]) -> None:
        """Each partition's persisted stream time, read through the batch (streamtime rule 2)."""
        if self._time_table is None:
            return
        for partition in partitions:
            self.times.load(partition, batch.tx(self._time_table, partition).get(STREAM_TIME_KEY))

    def _save_times(self, batch: Batch, partitions: set[int]) -> None:
        """Stream times this batch moved, written with its state (streamtime rule 2)."""
        if self._time_table is None:
            return
        moved = [(p, t) for p, t in self.times.dirty() if p in partitions]
        for p, t in moved:
            batch.tx(self._time_table, p).set(STREAM_TIME_KEY, str(t).encode())
        self.times.persisted(p for p, _ in moved)

    async def _flush(self, batch: Batch) -> int:
        """Step 5, until durable (a changelog send that fails is sent again)."""
        wait = self.send_backoff
        while True:
            try:
                written = await batch.state.flush()
                if self.health is not None and written:
                    self.health.send_succeeded()
                return written
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                doomed(exc)  # exactly-once: the transaction aborts instead (T4)
                self.counts.send_retried(self.spec.name, 1)
                if self.health is not None:
                    self.health.send_failed(exc)
                log.error("%s: state write failed (%r); trying again in %.1fs", self.spec.name, exc, wait)
                await asyncio.sleep(wait)
                wait = min(5.0, wait * 2)

    def _observe(self, items: list[Item], batch: Batch, started: float | None) -> Counter[str]:
        tally = batch.tally
        for item in items:
            if item.status is not None:
                tally[(item.type_name, item.status)] += 1
        statuses: Counter[str] = Counter()
        for (type_name, status), n in tally.items():
            self.counts.processed(self.spec.name, type_name, status, n)
            statuses[status] += n
        if started is not None and items:
            now = self.clock()
            self.counts.batch(self.spec.name, len(items), time.perf_counter() - started,
                              [max(0.0, now - i.record.timestamp_ms / 1000) for i in items])
        return statuses
