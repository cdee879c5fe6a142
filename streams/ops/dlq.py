"""Dead letters: read them a partition at a time, show them safely, redrive them.

The library behind ``faust -A streams dlq ls|show|redrive``, and the API an
operator console pages through (100,000 dead letters never sit in memory at once):

- :func:`iter_dead_letters` — an async generator over ``<service>.dlq`` topics,
  partition by partition, a fetch (at most :data:`FETCH_RECORDS` records) at a
  time; filters ``reason`` / ``since_ms``; resumes after a cursor (a dead letter's id);
- :func:`page` — ``(letters, next_cursor)``, at most ``limit`` letters;
- :func:`get_dead_letters` — given ids, seeks to each partition/offset and reads
  that one record (no scan);
- :func:`redrive` / :func:`redrive_letters` — republish, trusting the registry,
  never the letter, for where to;
- :func:`redriven_ids` / :class:`RedrivenIds` — the ids a ledger records as redriven
  (the latter incrementally, for the console's marks).

A dead letter is named by where it sits: ``<service>.dlq:<partition>:<offset>``. Every
service name and topic comes from :mod:`streams.registry`.

Redrive republishes a dead letter's key and bytes, unchanged, to its
``x-source-topic`` — only if that is one of **its own service's** source topics
(:func:`streams.registry.redrive_target`; a letter naming any other topic is reported
and skipped, never sent) — with an ``x-redriven-from`` header (the retry and DLQ
headers are dropped, so the event starts a fresh retry ladder). Protocol, per letter
(:class:`Claims`; every runner — ``dlq redrive``, any worker's console — follows it):

1. **claim**: append ``{"claim": <runner>}`` keyed by the letter's id to
   ``<service>.dlq.redriven`` (the ledger), await the ack: the broker gives it an offset;
2. read the ledger partition of that key up to the claim's offset. The broker's order
   decides: the runner whose claim is the *first live claim* of the id wins (a claim
   is live for :data:`CLAIM_TTL_MS` after its record's timestamp; a letter with a done
   record is never claimed again). A runner that lost sends nothing;
3. the winner sends the letter to the source topic, awaits the ack;
4. appends the done record ``{"to": <topic>, "at": <ms>}`` (same key), awaits the ack.

Ledger records carry the CloudEvents headers (:func:`ledger_headers`): ``ce_type``
``dlq.claim.v1`` / ``dlq.redriven.v1`` (models :class:`RedriveClaim` /
:class:`RedriveDone`, committed schemas ``schemas/dlq.*.v1.json``), ``ce_id`` derived from
the claim (runner and letter id), ``ce_time`` the record's ``at``. They are data: the
value says what a record is; a record whose ``ce_type`` names the other kind (or anything
else) is ignored by every reader (:func:`ledger_kind`: neither a claim nor a redrive);
records without headers (ledgers from before them) are read by their value.

Two, three or any number of runners at once: each letter is sent once — every claim
of one id lands in one partition (same key), so all runners read the same order.
A later redrive skips every id with a done record. Risks, named: a runner that
crashes between 1 and 4 leaves a claim without a done record — the letter is skipped
until the claim is :data:`CLAIM_TTL_MS` old, then the next run may claim it (and, if
the crash was after 3, sends it a second time; the consumer's dedup table then counts
it as a duplicate of the first copy). A winner that stalls longer than the TTL
between 2 and 3 gives the letter up instead of sending it (:meth:`Claims.still_mine`).
Claim times are the records' timestamps (the runners' clocks): keep clocks in step.

Showing a letter: its key, value and headers are someone else's bytes. Text is shown
through :func:`~streams.ops.text.printable` (control and other non-printable characters escaped, so a
letter's escape sequences never reach a terminal raw) and as hex when not UTF-8;
:meth:`DeadLetter.to_dict` gives JSON-ready text the same way.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import Field

from streams.engine import headers as H
from streams import registry
from streams.events import Message, ce_type, message_headers
from streams.faust.compat import aiokafka_client, fetch_high_watermarks
from streams.ops.text import printable, utf8_or_none
from streams.registry import dlq_topic, ledger_topic

__all__ = [
    "DeadLetter", "DlqError", "RedriveResult", "Outcome", "iter_dead_letters", "page",
    "get_dead_letters", "redrive", "redrive_letters", "redriven_ids", "RedrivenIds", "record_count",
    "parse_id", "parse_since", "printable", "show_bytes", "decide", "dlq_topic", "ledger_topic",
]

#: Records handed over per fetch (``getmany(max_records=…)``): what a scan holds at once,
#: next to the consumer's own prefetch of one partition fetch.
FETCH_RECORDS = 200
#: Largest record fetched (the DLQ topics' ``max.message.bytes`` is ``MAX_MESSAGE_BYTES``, 16 MiB).
MAX_FETCH_BYTES = 16 * 1024 * 1024
#: Bytes of each value a listing keeps (``dlq ls``, the console's DLQ page): a page of
#: 500 letters of 15 MB each holds 500 × 256 bytes of values, not 7.5 GB.
LIST_PREVIEW_BYTES = 256
#: Seconds a broker may stay silent (start, metadata, offsets, no progress on a partition)
#: before a scan gives up with a :class:`DlqError`.
STALL_TIMEOUT = 30.0

#: Extra aiokafka client arguments (TLS / SASL). The CLI passes them explicitly; this
#: module-level default is kept for callers that set it once.
CLIENT_KWARGS: dict[str, Any] = {}


class DlqError(Exception):
    """A failure an operator reads in one line: broker unreachable or stalled, …"""

    #: its message is written for an operator (the CLI prints it as it is)
    operator_message = True


# ---------------------------------------------------------------------------------------
# Showing someone else's bytes (text: streams.ops.text)


def show_bytes(raw: bytes | None, limit: int | None = None) -> str:
    """Bytes for a terminal: escaped UTF-8 text, else ``hex:…``; ``<null>`` for None;
    longer than ``limit`` characters → cut, with ``… (N bytes)``."""
    if raw is None:
        return "<null>"
    text = utf8_or_none(raw)
    if text is None:
        shown = "hex:" + (raw.hex() if limit is None else raw[: max(limit // 2, 1)].hex())
        cut = limit is not None and len(raw) > max(limit // 2, 1)
    else:
        cut = limit is not None and len(text) > limit
        shown = printable(text[:limit] if cut else text)
    return shown + (f"… ({len(raw)} bytes)" if cut else "")


def bytes_field(name: str, raw: bytes | None) -> dict[str, Any]:
    """JSON of bytes: ``{name: text}`` when UTF-8, ``{name: None, name_hex: "…"}`` when
    not, ``{name: None}`` for no bytes at all. (JSON escapes control characters.)"""
    if raw is None:
        return {name: None}
    text = utf8_or_none(raw)
    return {name: text} if text is not None else {name: None, f"{name}_hex": raw.hex()}


def format_ms(ms: int, *, seconds: bool = False) -> str:
    """Epoch ms as ``2024-05-01T12:00:00.123Z`` (``seconds``: ``2024-05-01 12:00:00``);
    a value no calendar holds (a forged header: year 3,170,843) as the number it is."""
    try:
        moment = datetime.fromtimestamp(ms / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    if seconds:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


#: Digits a time header may have to be read as epoch ms (Python's int() refuses 4,300+
#: and takes quadratic time below that; epoch ms of year 9999 have 15).
MAX_TIME_DIGITS = 18


# ---------------------------------------------------------------------------------------
# Dead letters


@dataclass(frozen=True)
class DeadLetter:
    service: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: header name → value (the last one when a name repeats); the retry/DLQ headers
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp_ms: int = 0
    #: every header in order, repeats kept (what redrive passes on)
    header_items: tuple[tuple[str, bytes], ...] = ()
    #: set when ``value`` is only a preview (its first bytes): the whole value's size.
    #: A preview is for showing; :func:`redrive_letters` refuses to send one.
    value_size: int | None = None

    @property
    def value_length(self) -> int | None:
        """Bytes of the whole value (None: a null value), preview or not."""
        if self.value_size is not None:
            return self.value_size
        return None if self.value is None else len(self.value)

    @property
    def is_preview(self) -> bool:
        return self.value_size is not None

    @property
    def id(self) -> str:
        return f"{dlq_topic(self.service)}:{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return H.text(self.headers, H.DLQ_REASON, "?")

    @property
    def source_topic(self) -> str:
        return H.text(self.headers, H.SOURCE_TOPIC)

    @property
    def attempt(self) -> str:
        return H.text(self.headers, H.ATTEMPT)

    @property
    def failed_at_ms(self) -> int:
        """``x-failed-at`` when it is a number of epoch ms, else the record's timestamp
        (what ``since`` filters on)."""
        raw = self.headers.get(H.FAILED_AT)
        if raw and raw.isdigit() and len(raw) <= MAX_TIME_DIGITS:
            return int(raw)
        return self.timestamp_ms

    def failed_at(self, *, seconds: bool = False) -> str:
        """The failure time for people: ``x-failed-at`` as a time, or — forged, out of
        any calendar's range, not a number — as given (escaped, cut at 40 characters)."""
        raw = self.headers.get(H.FAILED_AT)
        if raw and not (raw.isdigit() and len(raw) <= MAX_TIME_DIGITS):
            given = printable(raw[:40].decode("utf-8", "replace"))
            return f"{given}… ({len(raw)} bytes)" if len(raw) > 40 else given
        return format_ms(self.failed_at_ms, seconds=seconds)

    def source(self) -> str:
        h = self.headers
        return f"{self.source_topic}:{H.text(h, H.SOURCE_PARTITION)}:{H.text(h, H.SOURCE_OFFSET)}"

    def summary(self) -> dict[str, Any]:
        """JSON-ready overview (``dlq ls --json``): text only, never raw bytes."""
        h = self.headers
        return {
            "id": self.id, "service": self.service, "partition": self.partition, "offset": self.offset,
            "reason": self.reason, "attempt": H.integer(h, H.ATTEMPT, 0),
            "failed_at": self.failed_at(), "failed_at_ms": self.failed_at_ms,
            "source": {"topic": self.source_topic, "partition": H.text(h, H.SOURCE_PARTITION),
                       "offset": H.text(h, H.SOURCE_OFFSET)},
            "error": {"type": H.text(h, H.ERROR_TYPE), "message": H.text(h, H.ERROR_MESSAGE)},
            **bytes_field("key", self.key),
            "value_bytes": self.value_length,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything (``dlq show --json``): the summary, the value and every header."""
        items = self.header_items or tuple(self.headers.items())
        return {
            **self.summary(),
            **bytes_field("value", self.value),
            "timestamp_ms": self.timestamp_ms,
            "headers": [{**(bytes_field("name", H.raw_key(k)) if H.is_raw(k) else {"name": k}),
                         **bytes_field("value", v)} for k, v in items],
        }

    def row(self) -> tuple[str, ...]:
        """Escaped cells of ``dlq ls``: id, reason, attempt, failed at, source, key, error."""
        error = H.text(self.headers, H.ERROR_MESSAGE)
        return (self.id, printable(self.reason), printable(self.attempt), self.failed_at(seconds=True),
                printable(self.source()),
                show_bytes(self.key, 24), printable(error[:60]) + ("…" if len(error) > 60 else ""))


def _letter(service: str, r: Any, preview_bytes: int | None = None) -> DeadLetter:
    """The dead letter of record ``r``; with ``preview_bytes``, only that many bytes of
    its value are kept (the rest is dropped here, before anyone collects letters)."""
    items = tuple((k, v if v is not None else b"") for k, v in (r.headers or ()))
    value, size = r.value, None
    if preview_bytes is not None and value is not None and len(value) > preview_bytes:
        value, size = value[:preview_bytes], len(value)
    return DeadLetter(service, r.partition, r.offset, r.key, value, dict(items), r.timestamp, items, size)


def parse_id(letter_id: str) -> tuple[registry.ServiceSpec, int, int]:
    """``<service>.dlq:<partition>:<offset>`` → (service, partition, offset); ValueError
    when it is not one (wrong shape, or no service of the registry has that DLQ)."""
    parts = letter_id.rsplit(":", 2)
    spec = registry.service_of_dlq(parts[0]) if len(parts) == 3 else None
    if spec is None or not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts[1:]):
        raise ValueError(
            f"{letter_id!r} is not a dead letter id: expected <service>.dlq:<partition>:<offset>, "
            f"service one of {', '.join(registry.SERVICE_NAMES)}"
        )
    return spec, int(parts[1]), int(parts[2])


def parse_since(value: str, now: float | None = None) -> int:
    """``15m``, ``2h``, ``1d``, ``30s`` ago, or an ISO 8601 time → epoch ms."""
    now = time.time() if now is None else now
    bad = ValueError(f"--since {printable(value[:40])!r}: expected 15m, 2h, 1d or an ISO 8601 time")
    if len(value) > 64:
        raise bad
    m = re.fullmatch(r"\s*([0-9]{1,12}(?:\.[0-9]{1,6})?)\s*([smhd])\s*", value)
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return int((now - seconds) * 1000)
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return int(when.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        raise bad from None


def matches(d: DeadLetter, *, reason: str | None = None, since_ms: int | None = None) -> bool:
    if reason and d.reason != reason:
        return False
    return since_ms is None or d.failed_at_ms >= since_ms


def select(
    letters: Iterable[DeadLetter], *, reason: str | None = None, since_ms: int | None = None
) -> list[DeadLetter]:
    return [d for d in letters if matches(d, reason=reason, since_ms=since_ms)]


def services_of(service: str | Sequence[str] | None) -> tuple[str, ...]:
    """The service names a call covers: one, several, or (None) every registered one."""
    if service is None:
        return registry.SERVICE_NAMES
    names = (service,) if isinstance(service, str) else tuple(service)
    for name in names:
        registry.service(name)  # KeyError naming the known ones
    return names


# ---------------------------------------------------------------------------------------
# Reading, a partition at a time


def describe(exc: BaseException) -> str:
    """An exception in a few words, on one line (``KafkaConnectionError``, or the
    broker's own message for anything else, e.g. a failed SASL handshake)."""
    if isinstance(exc, (KafkaConnectionError, asyncio.TimeoutError)) or not str(exc):
        return type(exc).__name__
    text = " ".join(str(exc).split())
    return printable(text if len(text) <= 200 else text[:200] + "…")


def _kwargs(client_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(CLIENT_KWARGS if client_kwargs is None else client_kwargs)


async def _within(aw: Any, what: str, bootstrap: str) -> Any:
    try:
        return await asyncio.wait_for(aw, STALL_TIMEOUT)
    except asyncio.TimeoutError:
        raise DlqError(f"Kafka broker {bootstrap}: no answer to {what} in {STALL_TIMEOUT:.0f} s") from None


@asynccontextmanager
async def _consumer(bootstrap: str, client_kwargs: Mapping[str, Any] | None) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        # committed letters only: under PROCESSING_GUARANTEE=exactly_once a batch's letters are
        # in its transaction, and an aborted batch's are written again when it is re-read
        # (a topic nobody writes transactionally reads the same either way)
        isolation_level="read_committed",
        fetch_max_wait_ms=50, max_partition_fetch_bytes=MAX_FETCH_BYTES, **_kwargs(client_kwargs),
    )
    try:
        await asyncio.wait_for(consumer.start(), STALL_TIMEOUT)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await consumer.stop()
        raise DlqError(f"Kafka broker {bootstrap} unreachable ({describe(exc)})") from None
    try:
        yield consumer
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str, bootstrap: str) -> list[int]:
    """The topic's partitions, [] when it does not exist (never auto-creates it: the
    metadata request names no topic). The consumer is then assigned them all and its
    metadata covers the topic (leaders, for :func:`_ends`)."""
    cluster = await _within(aiokafka_client(consumer).fetch_all_metadata(), "a metadata request", bootstrap)
    parts = sorted(cluster.partitions_for_topic(topic) or ())
    if parts:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.pause(*tps)  # no prefetch of every partition at once; _scan assigns one at a time
        await _within(aiokafka_client(consumer).force_metadata_update(), "a metadata request", bootstrap)
    return parts


async def _ends(consumer: AIOKafkaConsumer, tps: list[TopicPartition], bootstrap: str) -> dict[TopicPartition, int]:
    # The embedded broker's ListOffsets is wrong; fetch_high_watermarks reads the true end.
    listed = await _within(consumer.end_offsets(tps), "ListOffsets", bootstrap)
    return await _within(fetch_high_watermarks(aiokafka_client(consumer), tps, listed), "a fetch", bootstrap)


async def _scan(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int | None, end: int, bootstrap: str,
    on_scanned: Callable[[int], None] | None = None,
) -> AsyncIterator[Any]:
    """Records of one partition from ``start`` (None: the beginning) up to ``end``
    (exclusive: a snapshot; letters added meanwhile wait for the next scan)."""
    consumer.assign([tp])
    if start is None:
        await consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, start)
    last_position, last_progress = -1, time.monotonic()
    while True:
        position = await _within(consumer.position(tp), "an offset request", bootstrap)
        if position >= end:
            return
        if position != last_position:
            last_position, last_progress = position, time.monotonic()
        elif time.monotonic() - last_progress > STALL_TIMEOUT:
            raise DlqError(f"Kafka broker {bootstrap} stopped answering: {tp.topic}:{tp.partition} "
                           f"stuck at offset {position} of {end} for {STALL_TIMEOUT:.0f} s")
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=FETCH_RECORDS)
        records = batch.get(tp, [])
        if on_scanned and records:
            on_scanned(sum(1 for r in records if r.offset < end))
        for r in records:
            if r.offset >= end:
                return
            yield r


async def iter_dead_letters(
    bootstrap: str,
    service: str | Sequence[str] | None = None,
    *,
    reason: str | None = None,
    since_ms: int | None = None,
    start_after: str | None = None,
    on_scanned: Callable[[int], None] | None = None,
    client_kwargs: Mapping[str, Any] | None = None,
    preview_bytes: int | None = None,
) -> AsyncIterator[DeadLetter]:
    """Dead letters of ``service`` (a name, names, or None: every registered service),
    in order of service, partition, offset — streamed, never a whole topic in memory.
    ``preview_bytes``: keep only that many bytes of each value (:attr:`DeadLetter.value_size`
    tells the whole size) — what a listing holds stays bounded however large the letters.

    ``start_after``: a dead letter id (a cursor); the scan resumes right after it
    (seeking, not re-reading). ``on_scanned(n)``: n more records read (a progress bar).
    Stop early with ``async with contextlib.aclosing(iter_dead_letters(…)) as it``
    so the consumer closes at once. Raises :class:`DlqError` when the broker is
    unreachable or stalls; ValueError for a bad cursor; KeyError for an unknown service.
    """
    names = services_of(service)
    cursor: tuple[str, int, int] | None = None
    if start_after is not None:
        spec, partition, offset = parse_id(start_after)
        if spec.name not in names:
            raise ValueError(f"cursor {start_after!r} is not a dead letter of {', '.join(names)}")
        cursor = (spec.name, partition, offset)
        names = names[names.index(spec.name):]
    async with _consumer(bootstrap, client_kwargs) as consumer:
        for name in names:
            topic = dlq_topic(name)
            parts = await _partitions(consumer, topic, bootstrap)
            if cursor and cursor[0] == name:
                parts = [p for p in parts if p >= cursor[1]]
            tps = [TopicPartition(topic, p) for p in parts]
            ends = await _ends(consumer, tps, bootstrap) if tps else {}
            for tp in tps:
                start = cursor[2] + 1 if cursor and cursor[0] == name and tp.partition == cursor[1] else None
                if ends[tp] <= (start or 0):
                    continue
                async with aclosing(_scan(consumer, tp, start, ends[tp], bootstrap, on_scanned)) as records:
                    async for r in records:
                        letter = _letter(name, r, preview_bytes)
                        if matches(letter, reason=reason, since_ms=since_ms):
                            yield letter


async def page(
    bootstrap: str,
    service: str | Sequence[str] | None = None,
    *,
    limit: int = 100,
    reason: str | None = None,
    since_ms: int | None = None,
    after: str | None = None,
    client_kwargs: Mapping[str, Any] | None = None,
    preview_bytes: int | None = None,
) -> tuple[list[DeadLetter], str | None]:
    """At most ``limit`` dead letters after the cursor ``after``, and the cursor of the
    next page (None: no more match). Reads one letter beyond the page to know.
    ``preview_bytes``: as for :func:`iter_dead_letters`."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    out: list[DeadLetter] = []
    more = False
    async with aclosing(iter_dead_letters(bootstrap, service, reason=reason, since_ms=since_ms,
                                          start_after=after, client_kwargs=client_kwargs,
                                          preview_bytes=preview_bytes)) as letters:
        async for letter in letters:
            if len(out) == limit:
                more = True
                break
            out.append(letter)
    return out, (out[-1].id if more else None)


async def get_dead_letters(
    bootstrap: str, ids: Sequence[str], *, client_kwargs: Mapping[str, Any] | None = None,
    preview_bytes: int | None = None,
) -> dict[str, DeadLetter | None]:
    """The dead letter of each id (None: there is none) — a seek to its partition and
    offset and one fetch each, not a scan. ValueError for an id of the wrong shape.
    ``preview_bytes``: as for :func:`iter_dead_letters` (several whole 16 MiB values
    are several times 16 MiB: read them one id at a time)."""
    wanted = [(i, *parse_id(i)) for i in ids]
    out: dict[str, DeadLetter | None] = {}
    async with _consumer(bootstrap, client_kwargs) as consumer:
        for letter_id, spec, partition, offset in wanted:
            out[letter_id] = None
            if partition not in await _partitions(consumer, spec.dlq, bootstrap):
                continue
            tp = TopicPartition(spec.dlq, partition)
            end = (await _ends(consumer, [tp], bootstrap))[tp]
            if offset >= end:
                continue
            async with aclosing(_scan(consumer, tp, offset, end, bootstrap)) as records:
                async for r in records:
                    if r.offset == offset:  # else: gone (retention, compaction)
                        out[letter_id] = _letter(spec.name, r, preview_bytes)
                    break
    return out


async def record_count(
    bootstrap: str, service: str | Sequence[str] | None = None, *, client_kwargs: Mapping[str, Any] | None = None
) -> int:
    """Records in the services' DLQ topics, from offsets alone (a progress bar's length,
    a console's badge): matching or not, redriven or not."""
    total = 0
    async with _consumer(bootstrap, client_kwargs) as consumer:
        for name in services_of(service):
            topic = dlq_topic(name)
            tps = [TopicPartition(topic, p) for p in await _partitions(consumer, topic, bootstrap)]
            if not tps:
                continue
            starts = await _within(consumer.beginning_offsets(tps), "ListOffsets", bootstrap)
            ends = await _ends(consumer, tps, bootstrap)
            total += sum(max(0, ends[tp] - int(starts.get(tp) or 0)) for tp in tps)
    return total


async def redriven_ids(
    bootstrap: str, service: str, *, client_kwargs: Mapping[str, Any] | None = None
) -> set[str]:
    """Every id with a done record in ``<service>.dlq.redriven`` (claims are not
    redrives). Read whole, on purpose: the ledger is small (a short record or two per
    redriven letter), and redrive skips these without claiming them again."""
    return await RedrivenIds(bootstrap, client_kwargs).redriven([service])


class RedrivenIds:
    """The ids with a done record in the services' ledgers, read incrementally: the
    first call reads each ``<service>.dlq.redriven`` once, later calls only what was
    appended since (the console's "already redriven" marks: 100,000 redriven letters
    are read once, not per page).

    Only done records count (a claim is no redrive yet). Redrive itself never trusts
    these: every send is claimed on the ledger first (:class:`Claims`)."""

    def __init__(self, bootstrap: str, client_kwargs: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.kafka = None if client_kwargs is None else dict(client_kwargs)
        #: service → ids read so far
        self.ids: dict[str, set[str]] = {}
        #: service → partition → next offset to read
        self.positions: dict[str, dict[int, int]] = {}
        self.lock = asyncio.Lock()

    async def redriven(self, services: Iterable[str]) -> set[str]:
        """Every id in the ledgers of ``services``, brought up to date."""
        names = list(services)
        async with self.lock:
            async with _consumer(self.bootstrap, self.kafka) as consumer:
                for name in names:
                    await self._catch_up(consumer, name)
            return set().union(*(self.ids.get(n, set()) for n in names))

    async def _catch_up(self, consumer: AIOKafkaConsumer, service: str) -> None:
        topic = ledger_topic(service)
        tps = [TopicPartition(topic, p) for p in await _partitions(consumer, topic, self.bootstrap)]
        if not tps:
            return
        ends = await _ends(consumer, tps, self.bootstrap)
        ids = self.ids.setdefault(service, set())
        positions = self.positions.setdefault(service, {})
        if any(ends[tp] < positions.get(tp.partition, 0) for tp in tps):  # the topic was recreated
            ids.clear()
            positions.clear()
        for tp in tps:
            start = positions.get(tp.partition, 0)
            if ends[tp] <= start:
                continue
            async with aclosing(_scan(consumer, tp, start or None, ends[tp], self.bootstrap)) as records:
                async for r in records:
                    if r.key and ledger_kind(r.value, r.headers) == "done":  # a claim is no redrive yet
                        ids.add(r.key.decode("utf-8", "replace"))
            positions[tp.partition] = ends[tp]

    def add(self, service: str, letter_id: str) -> None:
        """A redrive just made here (shown before the ledger is read again)."""
        self.ids.setdefault(service, set()).add(letter_id)


#: Milliseconds a claim holds a letter for its runner (see the module's docstring).
CLAIM_TTL_MS = 10 * 60 * 1000


class RedriveClaim(Message):
    """A ledger record: a runner's claim of a letter (keyed by the letter's id)."""

    domain = "dlq"
    name = "claim"

    claim: str = Field(min_length=1, max_length=64)
    #: epoch milliseconds on the runner's clock
    at: int = Field(ge=0)


class RedriveDone(Message):
    """A ledger record: the letter was sent to ``to`` (keyed by the letter's id)."""

    domain = "dlq"
    name = "redriven"

    #: the topic the letter went to (a Kafka topic name)
    to: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    at: int = Field(ge=0)


#: ``ce_source`` of ledger records (``dlq redrive`` and the console's redrive share the protocol).
LEDGER_SOURCE = "/order-streams/dlq-redrive"
_LEDGER_NS = uuid.UUID("5d0c4f8e-9a1b-4c52-8e47-3f6a2b9d1e07")
_LEDGER_TYPES = {"claim": RedriveClaim, "done": RedriveDone}


def claim_id(runner: str, letter_id: str) -> str:
    """The id of ``runner``'s claim of ``letter_id`` (one claim per runner and letter)."""
    return str(uuid.uuid5(_LEDGER_NS, f"claim:{runner}:{letter_id}"))


def ledger_headers(kind: str, runner: str, letter_id: str, at_ms: int) -> list[tuple[str, bytes]]:
    """CloudEvents headers of a ledger record: ``ce_id`` is the claim id (a done record's
    is derived from the claim it completes), so a retried send carries the same id."""
    cid = claim_id(runner, letter_id)
    ce_id = cid if kind == "claim" else str(uuid.uuid5(_LEDGER_NS, f"done:{cid}"))
    return list(message_headers(_LEDGER_TYPES[kind], ce_id, LEDGER_SOURCE, at_ms))


def ledger_kind(value: bytes | None, headers: Iterable[tuple[str, bytes]] | None = None) -> str:
    """``claim``, ``done`` or ``ignored``: what a ledger record says. The value decides
    (records before claims existed, ``{"to": …, "at": …}``, are done records); a
    ``ce_type`` header is data that may only agree with it — one that names anything
    else makes the record ``ignored`` by every reader (no claim, no redrive)."""
    kind = "claim" if value and value.startswith(b'{"claim"') else "done"
    for k, v in headers or ():
        if k == "ce_type" and v != ce_type(_LEDGER_TYPES[kind]).encode():
            return "ignored"
    return kind


def first_live_claim(claims: Iterable[tuple[int, int, str]], ttl_ms: int) -> tuple[int, int, str] | None:
    """The claim that owns a letter, of its ``(offset, timestamp ms, runner)`` claims:
    the first in offset order, unless a later one came when the owner's had expired
    (older than ``ttl_ms``) — then that one, and so on."""
    owner = None
    for claim in sorted(claims):
        if owner is None or claim[1] - owner[1] > ttl_ms:
            owner = claim
    return owner


class Claims:
    """A runner's claims on one service's ledger (steps 1–2 of the module's protocol).

    Rule, enforced in :meth:`claim`: a letter is this runner's to send only when, in the
    ledger partition of its id read up to this runner's own claim, there is no done
    record of it and this runner's claim is the first live one. Everything read is
    remembered (done ids, open claims), so each partition is read once, forward."""

    def __init__(self, bootstrap: str, service: str, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer,
                 *, ttl_ms: int = CLAIM_TTL_MS, clock: Callable[[], float] = time.time) -> None:
        import secrets

        self.bootstrap, self.topic = bootstrap, ledger_topic(service)
        self.producer, self.consumer = producer, consumer
        self.runner = secrets.token_hex(8)
        self.ttl_ms, self.clock = ttl_ms, clock
        self.positions: dict[int, int] = {}
        self.known: set[int] = set()
        self.done: set[str] = set()
        #: id -> [(offset, timestamp ms, runner)] of claims with no done record yet
        self.claims: dict[str, list[tuple[int, int, str]]] = {}
        #: id -> timestamp ms of this runner's winning claim
        self.won: dict[str, int] = {}

    async def claim(self, letter_id: str) -> bool:
        """Append this runner's claim of ``letter_id`` and read back who won."""
        now = int(self.clock() * 1000)
        value = json.dumps({"claim": self.runner, "at": now}).encode()
        headers = ledger_headers("claim", self.runner, letter_id, now)
        meta = await asyncio.wait_for(
            self.producer.send_and_wait(self.topic, key=letter_id.encode(), value=value, headers=headers),
            STALL_TIMEOUT)
        await self._read(meta.partition, meta.offset + 1)
        if letter_id in self.done:
            return False
        owner = first_live_claim([c for c in self.claims.get(letter_id, ()) if c[0] <= meta.offset], self.ttl_ms)
        mine = owner is not None and owner[0] == meta.offset and owner[2] == self.runner
        if mine:
            self.won[letter_id] = owner[1]
        return mine

    def still_mine(self, letter_id: str) -> bool:
        """False when this runner's claim has grown old enough for another to take over."""
        at = self.won.get(letter_id)
        return at is not None and int(self.clock() * 1000) - at < self.ttl_ms // 2

    async def _read(self, partition: int, end: int) -> None:
        start = self.positions.get(partition, 0)
        if end <= start:
            return
        tp = TopicPartition(self.topic, partition)
        if partition not in self.known:  # the first claim may have created the topic
            self.known = set(await _partitions(self.consumer, self.topic, self.bootstrap))
            if partition not in self.known:
                raise DlqError(f"ledger {self.topic} has no partition {partition}")
        async with aclosing(_scan(self.consumer, tp, start or None, end, self.bootstrap)) as records:
            async for r in records:
                if not r.key:
                    continue
                key = r.key.decode("utf-8", "replace")
                kind = ledger_kind(r.value, r.headers)
                if kind == "done":
                    self.done.add(key)
                    self.claims.pop(key, None)
                elif kind == "claim" and key not in self.done:
                    try:
                        runner = str(json.loads(r.value)["claim"])
                    except (ValueError, KeyError, TypeError):
                        runner = "?"
                    self.claims.setdefault(key, []).append((r.offset, r.timestamp, runner))
        self.positions[partition] = end


# ---------------------------------------------------------------------------------------
# Redrive


@dataclass(frozen=True)
class Outcome:
    """What redrive did (or, dry, would do) with one letter."""

    letter: DeadLetter
    #: ``redriven``, ``would_redrive``, ``refused``, ``already_redriven`` (another runner's
    #: claim came first) or ``gave_up`` (this runner's claim grew old before the send)
    action: str
    #: the topic it went / would go to
    target: str | None = None
    #: why it was refused
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.letter.id, "service": self.letter.service, "reason": self.letter.reason,
             "action": self.action, "target": self.target}
        if self.action == "refused":
            d.update(source_topic=self.letter.source_topic, why=self.why)
        return d


@dataclass
class RedriveResult:
    service: str = ""
    redriven: int = 0
    #: dry run: letters that would be redriven
    planned: int = 0
    #: already in the ledger (redriven before)
    skipped: int = 0
    #: their x-source-topic is not a source of their service: reported, never sent
    refused: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"redriven": self.redriven, "would_redrive": self.planned,
                "already_redriven": self.skipped, "refused": self.refused}


def decide(spec: registry.ServiceSpec, letter: DeadLetter, done_before: set[str] | frozenset[str]) -> tuple[str, str | None, str]:
    """(``skip`` | ``refuse`` | ``send``, target topic, why) for one letter of ``spec``.

    The letter's headers are data: ``x-source-topic`` may only pick one of the
    service's own sources (:func:`streams.registry.redrive_target`)."""
    if letter.service != spec.name:
        return "refuse", None, f"a dead letter of {letter.service}, not of {spec.name}"
    if letter.id in done_before:
        return "skip", None, "already redriven"
    if not letter.source_topic:
        return "refuse", None, "no x-source-topic header"
    target = registry.redrive_target(spec, letter.source_topic)
    if target is None:
        return "refuse", None, (f"x-source-topic {printable(letter.source_topic)!r} is not a source topic "
                                f"of {spec.name} ({', '.join(spec.sources)})")
    return "send", target, ""


async def each(letters: AsyncIterable[DeadLetter] | Iterable[DeadLetter]) -> AsyncIterator[DeadLetter]:
    """``letters`` as one async iterator, whether they are streamed or listed."""
    if isinstance(letters, AsyncIterable):
        async for d in letters:
            yield d
    else:
        for d in letters:
            yield d


async def redrive_letters(
    bootstrap: str,
    service: str,
    letters: AsyncIterable[DeadLetter] | Iterable[DeadLetter],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    done_before: set[str] | None = None,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    client_kwargs: Mapping[str, Any] | None = None,
) -> RedriveResult:
    """Redrive ``letters`` of ``service`` (streamed; any iterable), at most ``limit``
    sent; ``dry_run`` sends nothing. Already redriven letters (the ledger, read here
    unless ``done_before`` is given) are counted, refused ones reported through
    ``on_outcome`` and never sent."""
    spec = registry.service(service)
    if done_before is None:
        done_before = await redriven_ids(bootstrap, service, client_kwargs=client_kwargs)
    result = RedriveResult(service)
    producer: AIOKafkaProducer | None = None
    claims: Claims | None = None
    exits = AsyncExitStack()

    try:
        async with aclosing(each(letters)) as stream:
            async for d in stream:
                if limit is not None and result.redriven + result.planned >= limit:
                    break
                if d.is_preview and not dry_run:
                    raise ValueError(f"{d.id}: a preview of a dead letter cannot be redriven (read it whole)")
                verdict, target, why = decide(spec, d, done_before)
                if verdict == "skip":
                    result.skipped += 1
                    continue
                if verdict == "refuse":
                    result.refused += 1
                    on_outcome(Outcome(d, "refused", None, why))
                    continue
                assert target is not None
                if dry_run:
                    result.planned += 1
                    on_outcome(Outcome(d, "would_redrive", target))
                    continue
                if producer is None:
                    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                                max_request_size=MAX_FETCH_BYTES, **_kwargs(client_kwargs))
                    try:
                        await asyncio.wait_for(producer.start(), STALL_TIMEOUT)
                    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                        await producer.stop()
                        producer = None
                        raise DlqError(f"Kafka broker {bootstrap} unreachable ({describe(exc)})") from None
                    consumer = await exits.enter_async_context(_consumer(bootstrap, client_kwargs))
                    claims = Claims(bootstrap, service, producer, consumer)
                assert claims is not None
                if not await claims.claim(d.id):  # 1-2: another runner's claim came first
                    done_before.add(d.id)
                    result.skipped += 1
                    on_outcome(Outcome(d, "already_redriven", None, "another redrive claimed it first"))
                    continue
                if not claims.still_mine(d.id):
                    on_outcome(Outcome(d, "gave_up", None, "its claim grew old before the send; left for a later run"))
                    continue
                hdrs = list(H.writable((k, v) for k, v in (d.header_items or tuple(d.headers.items()))
                                       if k not in H.OURS and k != H.REDRIVEN_FROM))
                hdrs.append((H.REDRIVEN_FROM, d.id.encode()))
                await (await producer.send(target, key=d.key, value=d.value, headers=hdrs))  # 3
                at = int(time.time() * 1000)
                ledger = json.dumps({"to": target, "at": at}).encode()
                await (await producer.send(ledger_topic(service), key=d.id.encode(), value=ledger,  # 4
                                           headers=ledger_headers("done", claims.runner, d.id, at)))
                done_before.add(d.id)
                result.redriven += 1
                on_outcome(Outcome(d, "redriven", target))
    finally:
        await exits.aclose()
        if producer is not None:
            await producer.stop()
    return result


async def redrive(
    bootstrap: str,
    service: str,
    *,
    reason: str | None = None,
    since_ms: int | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    on_scanned: Callable[[int], None] | None = None,
    client_kwargs: Mapping[str, Any] | None = None,
) -> RedriveResult:
    """Redrive the dead letters of ``service`` that match ``reason`` / ``since_ms``,
    streaming its DLQ topic (see :func:`redrive_letters`)."""
    done_before = await redriven_ids(bootstrap, service, client_kwargs=client_kwargs)
    letters = iter_dead_letters(bootstrap, service, reason=reason, since_ms=since_ms,
                                on_scanned=on_scanned, client_kwargs=client_kwargs)
    async with aclosing(letters):
        return await redrive_letters(bootstrap, service, letters, limit=limit, dry_run=dry_run,
                                     done_before=done_before, on_outcome=on_outcome, client_kwargs=client_kwargs)
