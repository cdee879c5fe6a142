"""Retry and dead-letter headers (UTF-8 strings; names from the contract)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.errors import StreamsError
    from streams.pipeline import Record

ATTEMPT = "x-attempt"
NOT_BEFORE = "x-not-before"
SOURCE_TOPIC = "x-source-topic"
SOURCE_PARTITION = "x-source-partition"
SOURCE_OFFSET = "x-source-offset"
ERROR_TYPE = "x-error-type"
ERROR_MESSAGE = "x-error-message"
FIRST_FAILED_AT = "x-first-failed-at"
FAILED_AT = "x-failed-at"
DLQ_REASON = "x-dlq-reason"
REDRIVEN_FROM = "x-redriven-from"

#: Headers this module writes; the rest of a record's headers travel unchanged.
OURS = frozenset(
    {ATTEMPT, NOT_BEFORE, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, ERROR_TYPE,
     ERROR_MESSAGE, FIRST_FAILED_AT, FAILED_AT, DLQ_REASON}
)

MAX_ERROR_MESSAGE = 1000


def text(headers: Mapping[str, bytes], name: str, default: str = "") -> str:
    raw = headers.get(name)
    return raw.decode("utf-8", "replace") if raw is not None else default


def integer(headers: Mapping[str, bytes], name: str, default: int = 0) -> int:
    try:
        return int(text(headers, name) or default)
    except ValueError:
        return default


def attempt_of(headers: Mapping[str, bytes]) -> int:
    """Attempts already made (0 for a record that has never failed)."""
    return integer(headers, ATTEMPT, 0)


def source_partition(record: "Record") -> int:
    """Partition where the event first arrived (retries and DLQ stay on it)."""
    if SOURCE_PARTITION in record.headers:
        return integer(record.headers, SOURCE_PARTITION, record.partition)
    return record.partition


def failure_headers(
    record: "Record", error: "StreamsError", attempt: int, now_ms: int
) -> tuple[tuple[str, bytes], ...]:
    """Headers of a retry or DLQ record: passthrough headers + where and how it failed."""
    h = record.headers
    first = h.get(SOURCE_TOPIC) is not None
    passthrough = tuple((k, v) for k, v in h.items() if k not in OURS)
    ours = (
        (ATTEMPT, str(attempt)),
        (SOURCE_TOPIC, text(h, SOURCE_TOPIC) if first else record.topic),
        (SOURCE_PARTITION, text(h, SOURCE_PARTITION) if first else str(record.partition)),
        (SOURCE_OFFSET, text(h, SOURCE_OFFSET) if first else str(record.offset)),
        (ERROR_TYPE, type(error).__name__),
        (ERROR_MESSAGE, str(error)[:MAX_ERROR_MESSAGE]),
        (FIRST_FAILED_AT, text(h, FIRST_FAILED_AT) or str(now_ms)),
        (FAILED_AT, str(now_ms)),
    )
    return passthrough + tuple((k, v.encode()) for k, v in ours)
