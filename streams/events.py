"""Versioned event models (the wire format) and the registry event type → topic.

Topics are named ``events.<domain>.<event>.v<N>``. Every event is keyed by its
``order_id`` (raw UTF-8 bytes), which is also its idempotency key.

The schemas are ours, so unknown fields are rejected (``extra="forbid"``): a
producer that sends a field we do not know is sending a version we do not know,
and that event goes to the dead-letter topic instead of being half-understood.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from streams.engine.errors import DecodeError, ValidationFailed

if TYPE_CHECKING:
    from streams.engine.records import Record


#: Identifiers (order, user, SKU ids) are data from other people's code that ends up
#: in record keys, HTTP headers (the gateway's ``Idempotency-Key``), URLs and logs:
#: 1–128 characters from a safe set — letters, digits and ``._:-`` — starting with
#: a letter or digit. A control character in an order id once made the HTTP client
#: refuse the header on every retry; a 10,000-character id came back 400.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
ID_MAX_LENGTH = 128
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)]

#: Bounds of an order: items per order, units per item, amount (money, at most 4 decimals).
MAX_ITEMS = 100
MAX_QTY = 10_000
MAX_AMOUNT = Decimal("1000000000")
MAX_REASON_LENGTH = 500
Amount = Annotated[Decimal, Field(ge=0, le=MAX_AMOUNT, decimal_places=4)]


_random = random.Random()


_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (4 << 76) | (0x8000 << 48)
_new_uuid = object.__new__
_set = object.__setattr__


def new_event_id() -> uuid.UUID:
    """A random (version 4) event id for an event that came without one.

    From the process's PRNG, not ``os.urandom`` (ids must be unique, not secret), and
    built without ``UUID.__init__``'s argument checks: the two were 5 % of the
    worker's CPU when every decoded OrderPaid lacked an id. Equal to
    ``uuid.UUID(int=n, version=4)`` (tests/unit/test_events.py checks it)."""
    u = _new_uuid(uuid.UUID)
    _set(u, "int", (_random.getrandbits(128) & _V4_CLEAR) | _V4_SET)
    _set(u, "is_safe", uuid.SafeUUID.unknown)
    return u


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Event(BaseModel):
    """Base of every event: an id, an event time and a schema version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: ClassVar[str]
    name: ClassVar[str]
    schema_version: ClassVar[int] = 1

    version: Literal["v1"] = "v1"
    event_id: uuid.UUID = Field(default_factory=new_event_id)
    #: Event time. Optional on the wire (other services omit it); when absent the
    #: pipeline uses the Kafka record's timestamp.
    occurred_at: datetime | None = None

    @classmethod
    def topic(cls) -> str:
        return f"events.{cls.domain}.{cls.name}.v{cls.schema_version}"

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    def idempotency_key(self) -> str:
        return self.order_id  # type: ignore[attr-defined, no-any-return]

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Id
    qty: int = Field(gt=0, le=MAX_QTY)


class OrderCreated(Event):
    domain = "order"
    name = "created"

    order_id: Id
    user_id: Id
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    amount: Amount


class OrderPaid(Event):
    domain = "order"
    name = "paid"

    order_id: Id
    user_id: Id
    amount: Amount


class OrderCancelled(Event):
    domain = "order"
    name = "cancelled"

    order_id: Id
    reason: str = Field("", max_length=MAX_REASON_LENGTH)


class NotificationSent(Event):
    """Derived by the ``notifications`` service once the SMS gateway accepted the call."""

    domain = "notification"
    name = "sent"

    order_id: Id
    user_id: Id
    channel: Literal["sms", "log"] = "sms"
    #: ``event_id`` of the ``OrderPaid`` that caused this notification.
    causation_id: uuid.UUID


class InventoryReserved(Event):
    """Derived by the ``inventory`` service: every item of the order is reserved."""

    domain = "inventory"
    name = "reserved"

    order_id: Id
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    causation_id: uuid.UUID


class InventoryRejected(Event):
    """Derived by the ``inventory`` service: some item is out of stock; nothing is held."""

    domain = "inventory"
    name = "rejected"

    order_id: Id
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    #: SKUs that were short.
    short: tuple[Id, ...] = Field((), max_length=MAX_ITEMS)
    causation_id: uuid.UUID


E = TypeVar("E", bound=Event)

EVENT_TYPES: tuple[type[Event], ...] = (
    OrderCreated, OrderPaid, OrderCancelled, NotificationSent, InventoryReserved, InventoryRejected,
)

#: event type → topic, e.g. ``OrderPaid`` → ``events.order.paid.v1``.
TOPICS: dict[type[Event], str] = {t: t.topic() for t in EVENT_TYPES}
#: topic → event type (the decoder of a raw record).
EVENT_BY_TOPIC: dict[str, type[Event]] = {topic: t for t, topic in TOPICS.items()}


#: One function per step of an event's version chain: ``(domain, name, N)`` → the
#: function that turns a ``vN`` payload (a dict of the ``vN`` model's fields) into a
#: ``vN+1`` payload. Every ``vN+1`` model needs one (:func:`chain_gaps`).
Upcaster = Callable[[dict[str, Any], "UpcastContext"], dict[str, Any]]
UPCASTERS: dict[tuple[str, str, int], Upcaster] = {}


def families(types: Iterable[type[Event]] = EVENT_TYPES) -> dict[tuple[str, str], dict[int, type[Event]]]:
    """``(domain, name)`` → version number → model."""
    out: dict[tuple[str, str], dict[int, type[Event]]] = {}
    for t in types:
        out.setdefault((t.domain, t.name), {})[t.schema_version] = t
    return out


def chain_gaps(types: Iterable[type[Event]] = EVENT_TYPES,
               upcasters: Mapping[tuple[str, str, int], Any] = UPCASTERS) -> list[str]:
    """One line per gap in a version chain: a missing version below the newest, or a
    ``vN+1`` model without an upcaster from ``vN``. Empty when every chain is whole."""
    gaps: list[str] = []
    for (domain, name), versions in sorted(families(types).items()):
        for n in range(1, max(versions) + 1):
            if n not in versions:
                gaps.append(f"{domain}.{name}: v{n} is missing below v{max(versions)}")
            elif n > 1 and (domain, name, n - 1) not in upcasters:
                gaps.append(f"{domain}.{name}: v{n} has no upcaster from v{n - 1} "
                            f"(add UPCASTERS[({domain!r}, {name!r}, {n - 1})])")
    return gaps


def topic_for(event_type: type[Event]) -> str:
    try:
        return TOPICS[event_type]
    except KeyError:
        raise KeyError(f"{event_type.__name__} is not a registered event type") from None


def decode_event(event_type: type[E], record: "Record") -> E:
    """A record's raw bytes → a validated event, or :class:`DecodeError` (not a JSON
    object, empty, null) / :class:`ValidationFailed` (schema, bounds, or a record key
    that is not the event's idempotency key)."""
    if not record.value:
        raise DecodeError("empty value")
    try:
        event = event_type.model_validate_json(record.value)
    except ValidationError as exc:
        first = exc.errors()[0]
        top_level = first["type"] == "json_invalid" or not first["loc"]
        if top_level and first["type"] in ("json_invalid", "json_type", "model_type", "model_attributes_type"):
            raise DecodeError(f"not a JSON object: {first['msg']}") from None
        raise ValidationFailed(validation_summary(exc)) from None
    expected = event.idempotency_key().encode()
    if record.key != expected:
        shown = record.key[:64] if record.key is not None else None
        raise ValidationFailed(f"record key {shown!r} is not the idempotency key {expected!r}")
    return event


def validation_summary(exc: ValidationError) -> str:
    """The first three problems of a pydantic error, one line, values left out."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(parts)[:500]
