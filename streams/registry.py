"""Every consuming service, in one list: its name, source topics, tables, retry and
DLQ topics.

Wiring (``streams/app.py``), settings validation (``SERVICES``), metrics labels, the
``dlq`` commands, the console and ``reconcile`` all read this module; nothing else
spells a service name or guesses a service's topics. Retry and DLQ topic names are
derived from the service name (``<service>.retry.<n>``, ``<service>.dlq``): the
contract's naming, in one place.

Trust rule next to it: ``dlq redrive`` publishes a dead letter only to one of its
own service's :attr:`ServiceSpec.sources` — a header on the letter may choose
among them, never add to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.events import (
    InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderCreatedV2, OrderPaid,
)

#: Internal topics of the inventory service (the repartition by SKU, answers by order).
INVENTORY_REQUESTS = "inventory.requests"
INVENTORY_ANSWERS = "inventory.answers"


def retry_topic(service: str, tier: int) -> str:
    return f"{service}.retry.{tier}"


def dlq_topic(service: str) -> str:
    return f"{service}.dlq"


def ledger_topic(service: str) -> str:
    """Where ``dlq redrive`` records what it has redriven."""
    return f"{dlq_topic(service)}.redriven"


@dataclass(frozen=True)
class ServiceSpec:
    """What a consuming service reads, remembers and writes on failure."""

    name: str
    #: topics the service consumes (each record of them is processed by it)
    sources: tuple[str, ...]
    #: Faust tables (RocksDB + changelog) holding the service's state
    tables: tuple[str, ...]
    #: topics the service produces to (its derived events and internal topics)
    derived: tuple[str, ...] = ()
    description: str = ""

    @property
    def dlq(self) -> str:
        return dlq_topic(self.name)

    @property
    def ledger(self) -> str:
        return ledger_topic(self.name)

    def retry_topics(self, tiers: int) -> tuple[str, ...]:
        return tuple(retry_topic(self.name, n) for n in range(1, tiers + 1))

    def retry_tier_of(self, topic: str) -> int | None:
        """``n`` when ``topic`` is this service's ``<name>.retry.<n>``, else None."""
        prefix = f"{self.name}.retry."
        if topic.startswith(prefix) and topic[len(prefix):].isdigit():
            return int(topic[len(prefix):])
        return None


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
