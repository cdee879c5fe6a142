"""Wires each consuming service into the Faust app; ``SERVICES`` picks which run.

One function per service: its tables, topics, agents and timers. A worker runs every
service by default; ``SERVICES=notifications`` (say) runs one service per
deployment, each scaled on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents.inventory import InventoryService
from agents.notifications import NotificationsService
from agents.notifier import make_notifier
from agents.order_state import OrderStateService
from agents.retries import RetryTier
from streams.batching import run_batches
from streams.events import (
    Event, InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderPaid,
)
from streams.metrics import Metrics
from streams.pipeline import Pipeline, Publisher, RetryPolicy
from streams.rpc import BestEffortCaller
from streams.settings import WorkerSettings
from streams.topics import raw_topic, service_topics
from tables.dedup import FaustDedupTable, define_dedup_table
from tables.inventory import ANSWERS_TOPIC, REQUESTS_TOPIC
from tables.order_state import define_order_table

log = logging.getLogger(__name__)


@dataclass
class Context:
    app: Any
    settings: WorkerSettings
    metrics: Metrics
    publisher: Publisher
    topics: dict[type[Event], Any]
    #: topics only written here: declared at start with the right partition count
    declared: list[Any] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)
    pipelines: dict[str, Pipeline[Any]] = field(default_factory=dict)
    #: topic → batch processor, for the fast path (streams/fastpath.py)
    fast_routes: dict[str, Callable[[Any], Awaitable[Any]]] = field(default_factory=dict)

    @property
    def partitions(self) -> int:
        return self.settings.topic_partitions

    def service_topics(self, service: str, tiers: int) -> tuple[list[Any], Any]:
        retries, dlq = service_topics(self.app, service, tiers, self.partitions, self.settings.max_message_bytes)
        self.declared += [*retries, dlq]
        return retries, dlq


def wire_notifications(ctx: Context) -> None:
    """``OrderPaid`` → SMS gateway → ``NotificationSent``, on the batch pipeline."""
    app, s = ctx.app, ctx.settings
    ttl_ms = int(s.dedup_ttl * 1000)
    notifier = make_notifier(s.notifier_url, s.notifier_timeout)
    ctx.closers.append(notifier.close)
    dedup = FaustDedupTable(app, define_dedup_table(app, NotificationsService.name, ctx.partitions),
                            ctx.publisher, ctx.metrics, ttl_ms)
    pipeline = Pipeline(
        NotificationsService(notifier), publisher=ctx.publisher, dedup=dedup, metrics=ctx.metrics,
        retry=RetryPolicy(s.retry_delays), ttl_ms=ttl_ms, concurrency=s.handler_concurrency,
    )
    ctx.pipelines[NotificationsService.name] = pipeline
    ctx.tables["notifications-dedup"] = dedup.table
    retry_topics, _ = ctx.service_topics(NotificationsService.name, len(s.retry_delays))
    ctx.declared.append(ctx.topics[NotificationSent])

    @app.agent(ctx.topics[OrderPaid], name="notifications")
    async def notifications_agent(stream: Any) -> None:
        if s.fast_path:
            # The fast path has processed every record before Faust delivers it here
            # (only when the topic is shared with another agent): acknowledge it.
            manual = stream.noack()
            async for event in manual.events():
                await manual.ack(event)
        else:
            await run_batches(stream, pipeline.process, size=s.batch_size, within=s.batch_within)

    if s.fast_path:
        ctx.fast_routes[ctx.topics[OrderPaid].get_topic_name()] = pipeline.process

    tiers = [RetryTier(app, pipeline, n, batch_size=s.batch_size, clock=time.time)
             for n in range(1, len(retry_topics) + 1)]
    for tier, topic in zip(tiers, retry_topics):
        app.agent(topic, name=f"notifications-retry-{tier.tier}")(tier.run)
    ctx.metrics.oldest_retry_age.labels(NotificationsService.name).set_function(
        lambda: oldest_retry_age(tiers, time.time())
    )

    @app.timer(s.dedup_sweep_interval)
    async def dedup_ttl_sweep() -> None:
        async with never_crash("dedup TTL sweep"):
            await dedup.sweep()


def wire_order_state(ctx: Context) -> None:
    """Lifecycle events → the order state machine (``GET /orders/{id}``)."""
    app, s = ctx.app, ctx.settings
    table = define_order_table(app, ctx.partitions)
    ctx.tables["order-state"] = table
    service = OrderStateService(app, table, ctx.publisher, ctx.metrics, time.time, s.park_timeout)
    ctx.service_topics(OrderStateService.name, 0)
    names = [ctx.topics[t].get_topic_name() for t in
             (OrderCreated, OrderPaid, OrderCancelled, NotificationSent, InventoryReserved, InventoryRejected)]
    source = app.topic(*names, partitions=ctx.partitions, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="order-state")
    async def order_state_agent(stream: Any) -> None:
        async for event in stream.events():
            await service.on_event(event)

    @app.timer(min(1.0, s.park_timeout / 4))
    async def park_timeouts() -> None:
        async with never_crash("park timeouts"):
            await service.expire_parked()


def wire_inventory(ctx: Context) -> None:
    """``OrderCreated`` → stock per SKU → ``InventoryReserved`` | ``InventoryRejected``."""
    app, s = ctx.app, ctx.settings
    stock = app.Table("inventory-stock", partitions=ctx.partitions, key_type=bytes,
                      options={"driver": "rocksdict"}, help="SKU → available, decisions per order")
    orders = app.Table("inventory-orders", partitions=ctx.partitions, key_type=bytes,
                       options={"driver": "rocksdict"}, help="order id → answers per SKU, outcome")
    ctx.tables["inventory-stock"] = stock
    caller = BestEffortCaller(ctx.metrics.rpc_calls, timeout=s.rpc_timeout, max_in_flight=s.rpc_max_in_flight)
    service = InventoryService(stock, orders, ctx.publisher, ctx.metrics, caller,
                               search_url=s.search_url, clock=time.time)
    ctx.closers.append(service.close)
    requests = raw_topic(app, REQUESTS_TOPIC, ctx.partitions)
    answers = raw_topic(app, ANSWERS_TOPIC, ctx.partitions)
    ctx.service_topics(InventoryService.name, 0)
    ctx.declared += [ctx.topics[InventoryReserved], ctx.topics[InventoryRejected]]

    @app.agent(ctx.topics[OrderCreated], name="inventory")
    async def inventory_orders_agent(stream: Any) -> None:
        async for event in stream.events():
            await service.on_order_created(event)

    @app.agent(requests, name="inventory-stock")
    async def inventory_stock_agent(stream: Any) -> None:
        async for event in stream.events():
            await service.on_stock_command(event)

    @app.agent(answers, name="inventory-answers")
    async def inventory_answers_agent(stream: Any) -> None:
        async for event in stream.events():
            await service.on_answer(event)


@contextlib.asynccontextmanager
async def never_crash(what: str) -> AsyncIterator[None]:
    """Timers log their failures and try again next tick: an exception escaping a
    Faust timer stops the whole worker."""
    try:
        yield
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s failed; retrying at the next tick", what)


def oldest_retry_age(tiers: list[RetryTier], now: float) -> float:
    """Seconds since the oldest retry still waiting in any tier failed (0 if none)."""
    oldest = [t for t in (tier.oldest_failed_at_ms() for tier in tiers) if t is not None]
    return max(0.0, now - min(oldest) / 1000) if oldest else 0.0


SERVICE_WIRING: dict[str, Callable[[Context], None]] = {
    "notifications": wire_notifications,
    "order-state": wire_order_state,
    "inventory": wire_inventory,
}
