"""Every consuming service, in one list: its name, source topics, tables, retry and
DLQ topics.

The composition root (``streams/assembly.py``), settings validation (``SERVICES``),
metrics labels, the ``dlq`` commands, the console and ``reconcile`` all read this module;
nothing else spells a service name or guesses a service's topics. Retry and DLQ topic
names are derived from the service name (:mod:`streams.engine.topology`).

Trust rule next to it: ``dlq redrive`` publishes a dead letter only to one of its
own service's :attr:`ServiceSpec.sources` — a header on the letter may choose
among them, never add to them.
"""

from __future__ import annotations

from streams.engine.topology import ServiceSpec, dlq_topic, ledger_topic, retry_topic  # noqa: F401
from streams.events import (
    InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderCreatedV2, OrderPaid,
)

#: Internal topics of the inventory service (the repartition by SKU, answers by order).
INVENTORY_REQUESTS = "inventory.requests"
INVENTORY_ANSWERS = "inventory.answers"


NOTIFICATIONS = ServiceSpec(
    name="notifications",
    sources=(OrderPaid.topic(),),
    tables=("notifications-dedup",),
    derived=(NotificationSent.topic(),),
    description="OrderPaid → SMS gateway → NotificationSent, deduplicated by order id",
)

ORDER_STATE = ServiceSpec(
    name="order-state",
    sources=tuple(t.topic() for t in (
        OrderCreated, OrderCreatedV2, OrderPaid, OrderCancelled, NotificationSent, InventoryReserved,
        InventoryRejected,
    )),
    tables=("order-state",),
    description="the order lifecycle state machine (GET /orders/{id})",
)

INVENTORY = ServiceSpec(
    name="inventory",
    # every version of OrderCreated (consumers read each as the newest; see streams.events)
    sources=(OrderCreated.topic(), OrderCreatedV2.topic(), INVENTORY_REQUESTS, INVENTORY_ANSWERS),
    tables=("inventory-stock", "inventory-orders"),
    derived=(InventoryReserved.topic(), InventoryRejected.topic(), INVENTORY_REQUESTS, INVENTORY_ANSWERS),
    description="OrderCreated → stock per SKU → InventoryReserved | InventoryRejected",
)

#: Every consuming service, in wiring order.
SERVICES: tuple[ServiceSpec, ...] = (NOTIFICATIONS, ORDER_STATE, INVENTORY)
SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
_BY_NAME = {s.name: s for s in SERVICES}


def service(name: str) -> ServiceSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}") from None


def service_of_dlq(topic: str) -> ServiceSpec | None:
    """The service whose DLQ ``topic`` is, or None."""
    return next((s for s in SERVICES if s.dlq == topic), None)


def topics_written(tiers: int) -> set[str]:
    """Every topic a worker may produce to (changelogs aside): derived and internal
    topics, retry tiers and DLQs. A send anywhere else is refused by the engine."""
    out: set[str] = set()
    for s in SERVICES:
        out.update(s.derived, s.retry_topics(tiers), (s.dlq,))
    return out


def redrive_target(spec: ServiceSpec, source_topic: str) -> str | None:
    """Where a dead letter of ``spec`` may be redriven: ``source_topic`` only if it is
    one of the service's own sources (the header is data; the registry decides)."""
    return source_topic if source_topic in spec.sources else None
