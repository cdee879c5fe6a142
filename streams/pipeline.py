"""The commit protocol, in one place, for every batch-processing service.

A service is a small object with a ``name``, the ``event_type`` it consumes and an
``async handle(event) -> derived records``. :class:`Pipeline` runs it over a batch
of raw records:

1. **Decode and validate** each record once (raw bytes → pydantic model; the record
   key must equal the event's idempotency key). Failure → the record's bytes go to
   ``<service>.dlq`` with ``decode_error`` or ``validation_error``.
2. **Deduplicate**: one multi-get per partition in the dedup store. A key already
   processed (and not expired on event time) counts as ``duplicate``; so does a key
   seen earlier in the same batch.
3. **Run the handlers**, concurrently (at most ``concurrency`` at once). A handler's
   side effects carry the idempotency key (e.g. the SMS gateway's
   ``Idempotency-Key`` header).
4. **Send** every derived event, retry record and dead letter of the batch, and
   **await all their broker acks together**. A send that fails is sent again until
   acknowledged: nothing below runs before every ack is in.
5. **Mark** the keys of the batch's successful events processed (changelog records
   acknowledged, then local RocksDB).
6. Return; the caller then **acknowledges the batch's offsets**.

Data-loss risk: marking a key (5) before the derived events' acks (4) loses
messages on SIGKILL — the marker survives, the derived record dies in the
producer buffer, the replayed input is skipped as a duplicate (0–2 of 20,000 ids
lost per run with 3–5 SIGKILLs when it was done that way; 0 lost in 3 of 3 runs with
the order above). Acknowledging offsets (6) before 5 can only cause duplicates.

A handler failure never escapes: a retryable error (see :mod:`streams.errors`) sends
the record's bytes verbatim to ``<service>.retry.<attempt>`` with ``x-not-before``
set from ``RETRY_DELAYS``; when no retry is left, or the error is not retryable, to
``<service>.dlq``. Either way the offset is acknowledged only after that send's ack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from streams import headers as H
from streams.errors import DecodeError, StreamsError, ValidationFailed, classify
from streams.events import Event
from streams.metrics import DEAD_LETTER, DUPLICATE, RETRY, SUCCESS, Metrics

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, as the pipeline sees it (transport-neutral)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce. ``partition=None`` lets the key pick the partition."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None


class Publisher(Protocol):
    async def send(self, message: Outgoing) -> Awaitable[Any]:
        """Enqueue ``message``; return an awaitable that resolves on the broker ack.

        A publisher may also offer ``send_many(messages)`` returning one awaitable
        per message (shared by the messages of one record batch); it is used when
        present."""


class DedupStore(Protocol):
    def lookup(self, partition: int, keys: Sequence[bytes]) -> Sequence[int | None]:
        """Event time (ms) each key was processed at, or ``None``; one multi-get."""

    async def mark(self, marks: Mapping[int, Sequence[tuple[bytes, int]]]) -> None:
        """Record ``(key, event time ms)`` per partition; return once durable."""

    def observe(self, partition: int, event_time_ms: int) -> None:
        """Advance the partition's event-time watermark (drives the TTL sweep)."""


class Service(Protocol[E]):
    name: str
    event_type: type[E]

    async def handle(self, event: E) -> Sequence[Outgoing]:
        """Do the service's work for one event; return its derived records."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: seconds before retry 1, 2, …; ``len(delays)`` retries, then the DLQ.
    delays: tuple[float, ...]

    def delay_for(self, attempt: int) -> float | None:
        """Delay before retrying after failed attempt ``attempt`` (1-based), or None."""
        return self.delays[attempt - 1] if attempt <= len(self.delays) else None


def retry_topic(service: str, tier: int) -> str:
    return f"{service}.retry.{tier}"


def dlq_topic(service: str) -> str:
    return f"{service}.dlq"


@dataclass(slots=True)
class _Item:
    record: Record
    event: Event | None = None
    key: bytes = b""
    event_time_ms: int = 0
    error: StreamsError | None = None
    derived: Sequence[Outgoing] = ()


@dataclass(frozen=True, slots=True)
class BatchResult:
    success: int = 0
    duplicate: int = 0
    retry: int = 0
    dead_letter: int = 0


def decode(event_type: type[E], record: Record) -> E:
    """Raw bytes → validated event, or :class:`DecodeError` / :class:`ValidationFailed`."""
    if not record.value:
        raise DecodeError("empty value")
    try:
        event = event_type.model_validate_json(record.value)
    except ValidationError as exc:
        first = exc.errors()[0]
        top_level = first["type"] == "json_invalid" or not first["loc"]
        if top_level and first["type"] in ("json_invalid", "json_type", "model_type", "model_attributes_type"):
            raise DecodeError(f"not a JSON object: {first['msg']}") from None
        raise ValidationFailed(_short(exc)) from None
    expected = event.idempotency_key().encode()
    if record.key != expected:
        raise ValidationFailed(f"record key {record.key!r} is not the idempotency key {expected!r}")
    return event


async def send_until_acked(
    publisher: Publisher,
    outgoing: Sequence[Outgoing],
    *,
    backoff: float = 0.5,
    on_failure: Callable[[int], Any] = lambda n: None,
) -> None:
    """Send every message and await every ack; send the failed ones again until acked.

    Never gives up: while the broker is unreachable nothing can be acknowledged
    anyway, and giving up here would mean acknowledging offsets of unsent records.
    """
    from streams.publisher import gather_acks

    send_many = getattr(publisher, "send_many", None)
    pending = list(outgoing)
    while pending:
        futures: list[Any] = []
        try:  # sending itself raises when the broker is unreachable (metadata timeout)
            if send_many is not None:
                futures = await send_many(pending)
            else:
                for m in pending:
                    futures.append(await publisher.send(m))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            futures += [_failed(exc)] * (len(pending) - len(futures))
        results = await gather_acks(futures)
        failed = [m for m, r in zip(pending, results) if isinstance(r, BaseException)]
        if failed:
            on_failure(len(failed))
            first = next(r for r in results if isinstance(r, BaseException))
            log.error("%d of %d sends failed (%r); sending them again", len(failed), len(pending), first)
            await asyncio.sleep(backoff)
        pending = failed


def dead_letter(
    service: str, record: Record, error: StreamsError, now_ms: int, metrics: Metrics,
    *, reason: str | None = None,
) -> Outgoing:
    """The ``<service>.dlq`` record for ``record``: its key and bytes unchanged, the
    failure headers and ``x-dlq-reason``; counted in ``dead_letter_total``."""
    reason = reason or error.dlq_reason
    attempt = H.attempt_of(record.headers) + 1
    hdrs = H.failure_headers(record, error, attempt, now_ms) + ((H.DLQ_REASON, reason.encode()),)
    metrics.dead_letter.labels(service, reason).inc()
    log.warning("%s: dead-lettered %s[%d]@%d: %s (%s)", service, record.topic,
                record.partition, record.offset, reason, error)
    return Outgoing(dlq_topic(service), record.key, record.value, hdrs, H.source_partition(record))


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(parts)


class Pipeline(Generic[E]):
    def __init__(
        self,
        service: Service[E],
        *,
        publisher: Publisher,
        dedup: DedupStore,
        metrics: Metrics,
        retry: RetryPolicy,
        ttl_ms: int,
        concurrency: int = 64,
        clock: Callable[[], float] = time.time,
        send_retry_backoff: float = 0.5,
    ) -> None:
        self.service = service
        self.publisher = publisher
        self.dedup = dedup
        self.metrics = metrics
        self.retry = retry
        self.ttl_ms = ttl_ms
        self.clock = clock
        self.send_retry_backoff = send_retry_backoff
        self.concurrency = concurrency
        self._type_name = service.event_type.type_name()

    async def process(self, records: Sequence[Record]) -> BatchResult:
        """Run steps 1–5 for ``records``; the caller acknowledges them afterwards."""
        started = time.perf_counter()
        tally: Counter[str] = Counter()
        items = [self._decode(r) for r in records]  # 1
        fresh = self._dedup(items, tally)  # 2
        await self._run_all(fresh)  # 3
        outgoing: list[Outgoing] = []
        marks: dict[int, list[tuple[bytes, int]]] = {}
        now_ms = int(self.clock() * 1000)
        for item in items:
            if item.error is not None:
                outgoing.append(self._route_failure(item, now_ms, tally))
        for item in fresh:
            if item.error is None:
                outgoing.extend(item.derived)
                marks.setdefault(item.record.partition, []).append((item.key, item.event_time_ms))
                tally[SUCCESS] += 1
        await self._send_all(outgoing)  # 4
        if marks:
            await self._until_done(lambda: self.dedup.mark(marks), "mark")  # 5
        self._observe(records, tally, started)
        return BatchResult(tally[SUCCESS], tally[DUPLICATE], tally[RETRY], tally[DEAD_LETTER])

    # -- steps ------------------------------------------------------------------------

    def _decode(self, record: Record) -> _Item:
        item = _Item(record)
        try:
            event = decode(self.service.event_type, record)
        except StreamsError as exc:
            item.error = exc
            return item
        item.event = event
        item.key = record.key or b""
        occurred = event.occurred_at
        item.event_time_ms = int(occurred.timestamp() * 1000) if occurred else record.timestamp_ms
        return item

    def _dedup(self, items: list[_Item], tally: Counter[str]) -> list[_Item]:
        by_partition: dict[int, list[_Item]] = {}
        for item in items:
            if item.error is None:
                by_partition.setdefault(item.record.partition, []).append(item)
        fresh: list[_Item] = []
        for partition, group in by_partition.items():
            markers = self.dedup.lookup(partition, [i.key for i in group])
            seen_now: set[bytes] = set()
            for item, marked_at in zip(group, markers):
                self.dedup.observe(partition, item.event_time_ms)
                expired = marked_at is not None and item.event_time_ms - marked_at > self.ttl_ms
                if (marked_at is not None and not expired) or item.key in seen_now:
                    tally[DUPLICATE] += 1
                    continue
                seen_now.add(item.key)
                fresh.append(item)
        return fresh

    async def _run_all(self, items: list[_Item]) -> None:
        """Every handler, at most ``concurrency`` at once: a few runner coroutines take
        items in turn (one task per runner, not one per event)."""
        todo = iter(items)

        async def runner() -> None:
            for item in todo:
                await self._run(item)

        runners = min(self.concurrency, len(items))
        if runners == 1:
            await runner()
        elif runners:
            await asyncio.gather(*(runner() for _ in range(runners)))

    async def _run(self, item: _Item) -> None:
        try:
            item.derived = await self.service.handle(item.event)  # type: ignore[arg-type]
        except Exception as exc:  # every failure is routed, none escapes
            item.error = classify(exc)

    def _route_failure(self, item: _Item, now_ms: int, tally: Counter[str]) -> Outgoing:
        record, error = item.record, item.error
        assert error is not None
        attempt = H.attempt_of(record.headers) + 1
        delay = self.retry.delay_for(attempt) if error.retryable else None
        base = H.failure_headers(record, error, attempt, now_ms)
        name = self.service.name
        if delay is not None:
            tally[RETRY] += 1
            self.metrics.retry_scheduled.labels(name, str(attempt)).inc()
            not_before = now_ms + int(delay * 1000)
            hdrs = base + ((H.NOT_BEFORE, str(not_before).encode()),)
            topic = retry_topic(name, attempt)
            partition = H.source_partition(record)
            return Outgoing(topic, record.key, record.value, hdrs, partition)
        reason = error.dlq_reason if not error.retryable else "max_attempts"
        tally[DEAD_LETTER] += 1
        return dead_letter(name, record, error, now_ms, self.metrics, reason=reason)

    async def _send_all(self, outgoing: Sequence[Outgoing]) -> None:
        await send_until_acked(
            self.publisher, outgoing, backoff=self.send_retry_backoff,
            on_failure=self.metrics.publish_failures.labels(self.service.name).inc,
        )

    async def _until_done(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            try:
                await step()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.publish_failures.labels(self.service.name).inc()
                log.error("%s: %s failed (%r); trying again", self.service.name, what, exc)
                await asyncio.sleep(self.send_retry_backoff)

    def _observe(self, records: Sequence[Record], tally: Counter[str], started: float) -> None:
        m, name = self.metrics, self.service.name
        for status, n in tally.items():
            m.event_processed.labels(name, self._type_name, status).inc(n)
        m.batch_seconds.labels(name).observe(time.perf_counter() - started)
        m.batch_size.labels(name).observe(len(records))
        now = self.clock()
        latency = m.event_latency.labels(name)
        for r in records:
            latency.observe(max(0.0, now - r.timestamp_ms / 1000))
