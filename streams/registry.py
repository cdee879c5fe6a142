"""Every consuming service, in one list: what it reads, remembers and writes (its
:class:`~streams.engine.topology.ServiceSpec`, declared beside its logic in ``agents/``)
and how the worker builds it.

The composition root (``streams/assembly.py``), settings validation (``SERVICES``),
metrics labels, the ``dlq`` commands, the console and ``reconcile`` all read this module;
nothing else spells a service name or guesses a service's topics. Retry and DLQ topic
names are derived from the service name (:mod:`streams.engine.topology`).

Trust rule next to it: ``dlq redrive`` publishes a dead letter only to one of its
own service's :attr:`ServiceSpec.sources` — a header on the letter may choose
among them, never add to them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents import inventory, notifications, order_state
from agents.notifier import make_notifier
from agents.rpc import BestEffortCaller
from streams.engine.topology import ServiceSpec, dlq_topic, ledger_topic, retry_topic  # noqa: F401

if TYPE_CHECKING:
    from streams.metrics import Metrics
    from streams.settings import WorkerSettings

NOTIFICATIONS = notifications.SPEC
ORDER_STATE = order_state.SPEC
INVENTORY = inventory.SPEC
INVENTORY_REQUESTS = inventory.INVENTORY_REQUESTS
INVENTORY_ANSWERS = inventory.INVENTORY_ANSWERS


@dataclass
class BuildContext:
    """What a service is built from: the worker's settings and metrics; a client it opens
    adds its ``close`` to ``closers`` (run when the worker stops)."""

    settings: WorkerSettings
    metrics: Metrics
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass(frozen=True)
class Registration:
    """A consuming service of the worker: its spec and how it is built."""

    spec: ServiceSpec
    build: Callable[[BuildContext], Any]


def _notifications(ctx: BuildContext) -> notifications.NotificationsService:
    s = ctx.settings
    notifier = make_notifier(s.notifier_url, s.notifier_timeout, f"order-streams worker {s.web_url}")
    ctx.closers.append(notifier.close)
    return notifications.NotificationsService(notifier, concurrency=s.handler_concurrency)


def _order_state(ctx: BuildContext) -> order_state.OrderStateService:
    return order_state.OrderStateService(park_timeout=ctx.settings.park_timeout,
                                         default_currency=ctx.settings.default_currency)


def _inventory(ctx: BuildContext) -> inventory.InventoryService:
    s = ctx.settings
    caller = BestEffortCaller(ctx.metrics.rpc_calls, timeout=s.rpc_timeout, max_in_flight=s.rpc_max_in_flight)
    service = inventory.InventoryService(caller, search_url=s.search_url, decision_ttl=s.dedup_ttl,
                                         default_currency=s.default_currency)
    ctx.closers.append(service.close)
    return service


#: Every consuming service, in wiring order.
REGISTRATIONS: tuple[Registration, ...] = (
    Registration(NOTIFICATIONS, _notifications),
    Registration(ORDER_STATE, _order_state),
    Registration(INVENTORY, _inventory),
)
SERVICES: tuple[ServiceSpec, ...] = tuple(r.spec for r in REGISTRATIONS)
SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
_BY_NAME = {r.spec.name: r for r in REGISTRATIONS}


def registration(name: str) -> Registration:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}") from None


def service(name: str) -> ServiceSpec:
    return registration(name).spec


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
