"""Retry and dead-letter headers (UTF-8 strings; names from the contract).

Which of them are trusted where is decided in :mod:`streams.engine.routing`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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

#: A header whose key is not UTF-8 is written onward (to a dead letter, by a redrive) as
#: ``x-raw-key:<the key's bytes in hex>`` with its value unchanged: aiokafka can only write
#: ``str`` keys, and the evidence must keep the bytes. Repeated names stay repeated.
RAW_KEY_PREFIX = "x-raw-key:"


def is_raw(name: str) -> bool:
    """True for a header key read from bytes that are not UTF-8 (decoded with
    ``surrogateescape`` by the record reader, see ``streams.faust.compat``)."""
    if name.isascii():
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def any_raw(items: Iterable[tuple[str, bytes]]) -> bool:
    """True when one of the header keys is not UTF-8 (see :func:`is_raw`)."""
    return any(is_raw(k) for k, _ in items)


def raw_key(name: str) -> bytes:
    """The bytes of a header key as Kafka carried them."""
    return name.encode("utf-8", "surrogateescape")


def writable(items: Iterable[tuple[str, bytes | None]]) -> tuple[tuple[str, bytes], ...]:
    """Headers in order, repeats kept, as a producer can write them: a key that is not
    UTF-8 becomes ``x-raw-key:<hex>``, a null value an empty one."""
    return tuple((RAW_KEY_PREFIX + raw_key(k).hex() if is_raw(k) else k, v if v is not None else b"")
                 for k, v in items)


def text(headers: Mapping[str, bytes], name: str, default: str = "") -> str:
    raw = headers.get(name)
    return raw.decode("utf-8", "replace") if raw is not None else default


def integer(headers: Mapping[str, bytes], name: str, default: int = 0) -> int:
    try:
        return int(text(headers, name) or default)
    except ValueError:
        return default
