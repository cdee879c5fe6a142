"""Retry and dead-letter headers (UTF-8 strings; names from the contract).

Which of them are trusted where is decided in :mod:`streams.engine.routing`."""

from __future__ import annotations

from collections.abc import Mapping

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
