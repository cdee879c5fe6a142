"""Versioned event models (the wire format) and the registry event type → topic.

Topics are named ``events.<domain>.<event>.v<N>``. Every event is keyed by its
``order_id`` (raw UTF-8 bytes), which is also its idempotency key.

The schemas are ours, so unknown fields are rejected (``extra="forbid"``): a
producer that sends a field we do not know is sending a version we do not know,
and that event goes to the dead-letter topic instead of being half-understood.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Event(BaseModel):
    """Base of every event: an id, an event time and a schema version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: ClassVar[str]
    name: ClassVar[str]
    schema_version: ClassVar[int] = 1

    version: Literal["v1"] = "v1"
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
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

    sku: str = Field(min_length=1)
    qty: int = Field(gt=0)


class OrderCreated(Event):
    domain = "order"
    name = "created"

    order_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    items: tuple[OrderItem, ...] = Field(min_length=1)
    amount: Decimal = Field(ge=0)


class OrderPaid(Event):
    domain = "order"
    name = "paid"

    order_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    amount: Decimal = Field(ge=0)


class OrderCancelled(Event):
    domain = "order"
    name = "cancelled"

    order_id: str = Field(min_length=1)
    reason: str = ""


class NotificationSent(Event):
    """Derived by the ``notifications`` service once the SMS gateway accepted the call."""

    domain = "notification"
    name = "sent"

    order_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    channel: Literal["sms", "log"] = "sms"
    #: ``event_id`` of the ``OrderPaid`` that caused this notification.
    causation_id: uuid.UUID


class InventoryReserved(Event):
    """Derived by the ``inventory`` service: every item of the order is reserved."""

    domain = "inventory"
    name = "reserved"

    order_id: str = Field(min_length=1)
    items: tuple[OrderItem, ...] = Field(min_length=1)
    causation_id: uuid.UUID


class InventoryRejected(Event):
    """Derived by the ``inventory`` service: some item is out of stock; nothing is held."""

    domain = "inventory"
    name = "rejected"

    order_id: str = Field(min_length=1)
    items: tuple[OrderItem, ...] = Field(min_length=1)
    #: SKUs that were short.
    short: tuple[str, ...] = ()
    causation_id: uuid.UUID


EVENT_TYPES: tuple[type[Event], ...] = (
    OrderCreated, OrderPaid, OrderCancelled, NotificationSent, InventoryReserved, InventoryRejected,
)

#: event type → topic, e.g. ``OrderPaid`` → ``events.order.paid.v1``.
TOPICS: dict[type[Event], str] = {t: t.topic() for t in EVENT_TYPES}
#: topic → event type (the decoder of a raw record).
EVENT_BY_TOPIC: dict[str, type[Event]] = {topic: t for t, topic in TOPICS.items()}


def topic_for(event_type: type[Event]) -> str:
    try:
        return TOPICS[event_type]
    except KeyError:
        raise KeyError(f"{event_type.__name__} is not a registered event type") from None
