"""The record shapes the engine works with: consumed, to produce, and delivered."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple


class TP(NamedTuple):
    """A topic partition (equal to, and hashed like, Faust's and aiokafka's ``TP``)."""

    topic: str
    partition: int


#: The headers of a record that has none (shared, read-only).
NO_HEADERS: Mapping[str, bytes] = MappingProxyType({})


class Record(NamedTuple):
    """A consumed record, as the engine sees it. (Tuples, not frozen dataclasses: one
    is built per record, and a frozen dataclass's ``__init__`` cost ~4 × as much.)"""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: the broker record's timestamp (CreateTime as the producer set it, or LogAppendTime)
    timestamp_ms: int
    #: header name → value, for lookups (the last one when a name repeats)
    headers: Mapping[str, bytes] = NO_HEADERS
    #: every header in order, repeated names kept (empty: ``headers`` has them all);
    #: what travels onward, as evidence, to retry and DLQ records
    header_items: tuple[tuple[str, bytes], ...] = ()

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)

    def all_headers(self) -> tuple[tuple[str, bytes], ...]:
        """Every header in order, repeated names kept."""
        return self.header_items or tuple(self.headers.items())

    def size(self) -> int:
        """Bytes of key, value and headers (what a producer must carry to resend it)."""
        return (len(self.key or b"") + len(self.value or b"")
                + sum(len(k) + len(v) for k, v in self.all_headers()))


class Outgoing(NamedTuple):
    """A record to produce. ``partition=None`` lets the key choose the partition."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None

    def size(self) -> int:
        return (len(self.key or b"") + len(self.value or b"")
                + sum(len(k) + len(v) for k, v in self.headers))


class Delivered(NamedTuple):
    """Where the broker stored a record (its exact offset, not its batch's)."""

    topic: str
    partition: int
    offset: int


#: The broker's answer to one sent message: ``(future, index)`` — ``future`` resolves to
#: the metadata (``.offset``) of the first record of the message's record batch (one
#: future per batch, not per message) and the message is ``index`` records after it. A
#: plain tuple: one is made per message (the profile: docs/design-notes.md, "Hot-path
#: costs").
Ack = tuple[Awaitable[Any], int]
