"""Where a failed event goes, and which headers are trusted on the way.

Header trust rules (the contract's "ours only on the service's own retry and DLQ
topics"), enforced by :func:`origin_of`:

1. On a **source topic** every ``x-*`` header is someone else's data: ignored for
   routing, attempts and redrive targets, and not copied onward as if it were ours.
   (What trusting them did: docs/design-notes.md, "Header trust".)
2. On the service's **own retry topic** ``<service>.retry.<n>`` the headers are
   ours, and still checked: the attempt count is ``n`` (the topic says it, not the
   header); ``x-source-topic`` must be one of the service's sources, else the record
   is dead-lettered (``validation_error``); ``x-not-before`` is clamped to at most
   the tier's delay from now.
3. Retry and DLQ records go to the partition the record was consumed from (retry,
   DLQ and source topics are co-partitioned; the publisher falls back to the key
   when the target has fewer partitions). No header ever chooses a topic or a
   partition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from streams.engine import headers as H
from streams.engine.errors import StreamsError, ValidationFailed
from streams.engine.records import Outgoing, Record
from streams.engine.streamtime import MAX_CLOCK_SKEW_MS  # noqa: F401  (re-exported)
from streams.engine.topology import ServiceSpec, dlq_topic, retry_topic

#: Headers of a retry or DLQ record that are ours; on a source record they are dropped.
OURS = H.OURS | {"x-original-size", "x-original-sha256", "x-original-key-size", "x-original-key-sha256",
                 "x-dropped-headers"}
#: A too-large dead letter keeps this many bytes of the value, and of other people's headers.
LETTER_HEAD_BYTES = 1024
LETTER_HEADER_BUDGET = 16 * 1024


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: seconds before retry 1, 2, …; ``len(delays)`` retries, then the DLQ.
    delays: tuple[float, ...]

    @property
    def tiers(self) -> int:
        return len(self.delays)

    def delay_after(self, attempts: int) -> float | None:
        """Seconds to wait after ``attempts`` failed attempts (1-based), or None: no retry left."""
        return self.delays[attempts - 1] if 1 <= attempts <= len(self.delays) else None


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an event first arrived and how many attempts it has already had."""

    topic: str
    partition: int
    offset: int
    attempts: int
    first_failed_at_ms: int | None = None


def origin_of(record: Record, spec: ServiceSpec, policy: RetryPolicy, now_ms: int) -> Origin:
    """The record's origin under the trust rules; :class:`ValidationFailed` when a
    retry record names a source that is not the service's."""
    tier = spec.retry_tier_of(record.topic)
    if tier is None:
        return Origin(record.topic, record.partition, record.offset, 0)
    source = H.text(record.headers, H.SOURCE_TOPIC)
    if source not in spec.sources:
        raise ValidationFailed(f"retry record names source topic {source[:200]!r}, "
                               f"which {spec.name} does not read")
    offset = max(-1, H.integer(record.headers, H.SOURCE_OFFSET, -1))
    first = H.integer(record.headers, H.FIRST_FAILED_AT, 0)
    first_failed = first if 0 < first <= now_ms else None
    return Origin(source, record.partition, offset, min(tier, policy.tiers), first_failed)


def due_at_ms(record: Record, tier: int, policy: RetryPolicy, now_ms: int) -> int:
    """When a retry record of ``tier`` may run: its ``x-not-before``, but never later
    than the tier's delay after the record was written — a fixed point, so a forged
    year-9999 header (or broker timestamp) cannot park a retry partition: a record
    stamped in the future is due at once — and never later than the tier's delay after
    ``now_ms``. ``now_ms`` is the worker's process clock (monotonic within the process,
    :class:`~streams.engine.streamtime.ProcessClock`), and the record's time is the
    clock of the worker that wrote it: a clock stepped between the two can make a retry
    due early (it runs at once), never wait longer than its tier's delay
    (:mod:`streams.engine.streamtime`, rule 5)."""
    delay_ms = int((policy.delays[tier - 1] if 1 <= tier <= policy.tiers else 0) * 1000)
    written = record.timestamp_ms
    if written <= 0 or written > now_ms + MAX_CLOCK_SKEW_MS:
        return now_ms
    latest = min(written, now_ms) + delay_ms
    return min(H.integer(record.headers, H.NOT_BEFORE, latest), latest)


def _passthrough(record: Record) -> tuple[tuple[str, bytes], ...]:
    """Other people's headers in order, repeated names kept, a key that is not UTF-8
    as ``x-raw-key:<hex>`` (:func:`streams.engine.headers.writable`)."""
    return H.writable((k, v) for k, v in record.all_headers() if k not in OURS)


def failure_headers(record: Record, origin: Origin, error: StreamsError, attempts: int,
                    now_ms: int) -> tuple[tuple[str, bytes], ...]:
    """Other people's headers unchanged, then ours: where the event first arrived,
    how it failed, attempts made."""
    ours = (
        (H.ATTEMPT, str(attempts)),
        (H.SOURCE_TOPIC, origin.topic),
        (H.SOURCE_PARTITION, str(origin.partition)),
        (H.SOURCE_OFFSET, str(origin.offset)),
        (H.ERROR_TYPE, type(error).__name__),
        (H.ERROR_MESSAGE, str(error)[:H.MAX_ERROR_MESSAGE]),
        (H.FIRST_FAILED_AT, str(origin.first_failed_at_ms or now_ms)),
        (H.FAILED_AT, str(now_ms)),
    )
    return _passthrough(record) + tuple((k, v.encode()) for k, v in ours)


def retry_record(service: str, record: Record, origin: Origin, error: StreamsError, attempts: int,
                 delay: float, now_ms: int) -> Outgoing:
    hdrs = failure_headers(record, origin, error, attempts, now_ms)
    hdrs += ((H.NOT_BEFORE, str(now_ms + int(delay * 1000)).encode()),)
    return Outgoing(retry_topic(service, attempts), record.key, record.value, hdrs, record.partition)


def dead_letter(service: str, record: Record, origin: Origin, error: StreamsError, attempts: int,
                now_ms: int, *, reason: str | None = None) -> Outgoing:
    """The ``<service>.dlq`` record: the source key and bytes unchanged, failure
    headers and ``x-dlq-reason``."""
    hdrs = failure_headers(record, origin, error, attempts, now_ms)
    hdrs += ((H.DLQ_REASON, (reason or error.dlq_reason).encode()),)
    return Outgoing(dlq_topic(service), record.key, record.value, hdrs, record.partition)


def shrink_letter(letter: Outgoing) -> Outgoing:
    """A dead letter too large for the DLQ, kept as: our headers, other people's
    headers up to a budget (``x-dropped-headers``: how many did not fit), the first
    :data:`LETTER_HEAD_BYTES` bytes of the value and of the key, each cut one described
    by ``x-original-size``/``x-original-sha256`` (the value) and
    ``x-original-key-size``/``x-original-key-sha256`` (the key), reason ``too_large``.
    Its size is bounded whatever the letter's key, headers and value were, so a dead
    letter is never lost for its size."""
    value = letter.value or b""
    ours = [(k, v) for k, v in letter.headers if k in OURS and k != H.DLQ_REASON]
    theirs: list[tuple[str, bytes]] = []
    budget = LETTER_HEADER_BUDGET
    dropped = 0
    for k, v in letter.headers:
        if k in OURS:
            continue
        if len(k) + len(v) <= budget:
            theirs.append((k, v))
            budget -= len(k) + len(v)
        else:
            dropped += 1
    extra = [
        ("x-original-size", str(letter.size()).encode()),
        ("x-original-sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    key = letter.key
    if key is not None and len(key) > LETTER_HEAD_BYTES:
        extra += [("x-original-key-size", str(len(key)).encode()),
                  ("x-original-key-sha256", hashlib.sha256(key).hexdigest().encode())]
        key = key[:LETTER_HEAD_BYTES]
    if dropped:
        extra.append(("x-dropped-headers", str(dropped).encode()))
    extra.append((H.DLQ_REASON, b"too_large"))
    return Outgoing(letter.topic, key, value[:LETTER_HEAD_BYTES], tuple(theirs + ours + extra), letter.partition)


def is_shrunk(letter: Outgoing) -> bool:
    """True for a letter :func:`shrink_letter` made (it cannot be made smaller)."""
    return any(k == "x-original-sha256" for k, _ in letter.headers)
