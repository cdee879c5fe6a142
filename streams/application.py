"""Builds the Faust app from the settings and wires every service into it.

The path of one ``OrderPaid`` through the worker, top to bottom:
``events.order.paid.v1`` → :func:`streams.batching.run_batches` →
:class:`streams.pipeline.Pipeline` (decode, dedup in :mod:`tables.dedup`,
:class:`agents.notifications.NotificationsService`, await acks, mark) → offsets
acknowledged → ``events.notification.sent.v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import faust

from agents.inventory import InventoryService
from agents.notifications import NotificationsService
from agents.notifier import make_notifier
from agents.order_state import OrderStateService
from agents.retries import RetryTier
from streams.batching import run_batches
from streams.commands import register_commands
from streams.events import (
    InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderPaid,
)
from streams.metrics import Metrics
from streams.offsets import install_fetch_end_offsets
from streams.pipeline import Outgoing, Pipeline, RetryPolicy
from streams.rpc import BestEffortCaller
from streams.settings import WorkerSettings
from streams.topics import all_event_topics, raw_topic, service_topics
from streams.web import register_web
from tables.dedup import FaustDedupTable, define_dedup_table
from tables.inventory import ANSWERS_TOPIC, REQUESTS_TOPIC
from tables.order_state import define_order_table

log = logging.getLogger(__name__)

APP_ID = "order-streams"


class FaustPublisher:
    """:class:`streams.pipeline.Publisher` on the worker's own Faust producer."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, message: Outgoing) -> Any:
        return await self.app.producer.send(
            message.topic, message.key, message.value, message.partition, None,
            list(message.headers) or None,
        )


@dataclass(frozen=True)
class Wiring:
    """What tests and commands need to reach inside a built app."""

    settings: WorkerSettings
    metrics: Metrics
    notifications: Pipeline[OrderPaid]
    dedup: FaustDedupTable
    order_table: Any
    inventory: InventoryService


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


def consumer_lag(app: Any) -> list[tuple[str, int, int]]:
    """Per assigned partition: the fetcher's high watermark − the next offset to read
    (Faust's ``Consumer._read_offset``, a private name of the pinned version)."""
    if app.rebalancing or app.consumer is None:
        return []
    out = []
    consumer = app.consumer
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet
        return []
    for tp in sorted(assigned):
        try:
            high = consumer.highwater(tp)
        except Exception:
            continue
        if high is None:
            continue
        read = consumer._read_offset.get(tp)
        out.append((tp.topic, tp.partition, max(0, int(high) - (int(read) + 1 if read is not None else 0))))
    return out


def broker_urls(value: str) -> list[str]:
    """``kafka://a:9092,b:9092`` → ``["kafka://a:9092", "kafka://b:9092"]``."""
    scheme, _, hosts = value.partition("://")
    return [f"{scheme}://{h.strip()}" for h in hosts.split(",") if h.strip()]


def create_app(settings: WorkerSettings) -> faust.App:
    if settings.end_offsets_from_fetch:
        install_fetch_end_offsets()
    partitions = settings.topic_partitions
    app = faust.App(
        APP_ID,
        broker=broker_urls(settings.kafka_broker),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        canonical_url=settings.web_url,
        topic_partitions=partitions,
        topic_replication_factor=settings.topic_replication_factor,
        table_standby_replicas=settings.table_standby_replicas,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger=0.005,
        producer_max_request_size=settings.max_message_bytes,
        consumer_max_fetch_size=settings.max_message_bytes,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # Measured on the embedded broker: with Faust's defaults a restarted worker
        # waited ~2 minutes to rejoin its group; with these it rejoins in ~10 s.
        # Below ~6 s session timeout a busy 2-core machine saw false evictions.
        broker_session_timeout=8.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=8.0,
        broker_request_timeout=30.0,
        autodiscover=False,
        broker_credentials=settings.faust_credentials(),
    )
    metrics = Metrics()
    publisher = FaustPublisher(app)
    topics = all_event_topics(app, partitions)
    ttl_ms = int(settings.dedup_ttl * 1000)

    # -- notifications: OrderPaid → SMS gateway → NotificationSent (batch path) --------
    notifier = make_notifier(settings.notifier_url, settings.notifier_timeout)
    dedup_table = define_dedup_table(app, NotificationsService.name, partitions)
    dedup = FaustDedupTable(app, dedup_table, publisher, metrics, ttl_ms)
    notifications = Pipeline(
        NotificationsService(notifier),
        publisher=publisher,
        dedup=dedup,
        metrics=metrics,
        retry=RetryPolicy(settings.retry_delays),
        ttl_ms=ttl_ms,
        concurrency=settings.handler_concurrency,
    )
    retry_tiers, notifications_dlq = service_topics(
        app, NotificationsService.name, len(settings.retry_delays), partitions,
        settings.max_message_bytes,
    )

    @app.agent(topics[OrderPaid], name="notifications")
    async def notifications_agent(stream: Any) -> None:
        await run_batches(
            stream, notifications.process, size=settings.batch_size, within=settings.batch_within
        )

    tiers = [
        RetryTier(app, notifications, n, batch_size=settings.batch_size, clock=time.time)
        for n in range(1, len(retry_tiers) + 1)
    ]
    for tier, topic in zip(tiers, retry_tiers):
        app.agent(topic, name=f"notifications-retry-{tier.tier}")(tier.run)
    metrics.oldest_retry_age.labels(NotificationsService.name).set_function(
        lambda: oldest_retry_age(tiers, time.time())
    )

    @app.timer(settings.dedup_sweep_interval)
    async def dedup_ttl_sweep() -> None:
        async with never_crash("dedup TTL sweep"):
            await dedup.sweep()

    # -- order-state: created / paid / cancelled / notification-sent → order table ------
    order_table = define_order_table(app, partitions)
    order_state = OrderStateService(
        app, order_table, publisher, metrics, time.time, settings.park_timeout
    )
    order_topics = [
        topics[t].get_topic_name()
        for t in (OrderCreated, OrderPaid, OrderCancelled, NotificationSent, InventoryReserved, InventoryRejected)
    ]
    _, order_state_dlq = service_topics(
        app, OrderStateService.name, 0, partitions, settings.max_message_bytes
    )
    order_source = app.topic(
        *order_topics, partitions=partitions, key_serializer="raw", value_serializer="raw"
    )

    @app.agent(order_source, name="order-state")
    async def order_state_agent(stream: Any) -> None:
        async for event in stream.events():
            await order_state.on_event(event)

    @app.timer(min(1.0, settings.park_timeout / 4))
    async def park_timeouts() -> None:
        async with never_crash("park timeouts"):
            await order_state.expire_parked()

    # -- inventory: OrderCreated → stock per SKU → InventoryReserved | InventoryRejected --
    stock_table = app.Table("inventory-stock", partitions=partitions, key_type=bytes,
                            options={"driver": "rocksdict"}, help="SKU → available, decisions per order")
    inventory_orders = app.Table("inventory-orders", partitions=partitions, key_type=bytes,
                                 options={"driver": "rocksdict"}, help="order id → answers per SKU, outcome")
    caller = BestEffortCaller(metrics.rpc_calls, timeout=settings.rpc_timeout,
                              max_in_flight=settings.rpc_max_in_flight)
    inventory = InventoryService(stock_table, inventory_orders, publisher, metrics, caller,
                                 search_url=settings.search_url, clock=time.time)
    requests_topic = raw_topic(app, REQUESTS_TOPIC, partitions)
    answers_topic = raw_topic(app, ANSWERS_TOPIC, partitions)
    _, inventory_dlq = service_topics(app, InventoryService.name, 0, partitions, settings.max_message_bytes)

    @app.agent(topics[OrderCreated], name="inventory")
    async def inventory_orders_agent(stream: Any) -> None:
        async for event in stream.events():
            await inventory.on_order_created(event)

    @app.agent(requests_topic, name="inventory-stock")
    async def inventory_stock_agent(stream: Any) -> None:
        async for event in stream.events():
            await inventory.on_stock_command(event)

    @app.agent(answers_topic, name="inventory-answers")
    async def inventory_answers_agent(stream: Any) -> None:
        async for event in stream.events():
            await inventory.on_answer(event)

    # -- topics that are only written: declared up front with the right partitions ----
    declared = [topics[NotificationSent], topics[InventoryReserved], topics[InventoryRejected],
                *retry_tiers, notifications_dlq, order_state_dlq, inventory_dlq]

    @app.task
    async def declare_topics() -> None:
        for topic in declared:
            await topic.maybe_declare()

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def close_clients(app: Any, **kwargs: Any) -> None:
        await notifier.close()
        await inventory.close()

    register_web(app, metrics, order_table, stock_table)
    metrics.consumer_lag.source = lambda: consumer_lag(app)
    register_commands(app, settings)
    app.wiring = Wiring(settings, metrics, notifications, dedup, order_table, inventory)  # type: ignore[attr-defined]
    return app


__all__ = ["create_app", "broker_urls", "raw_topic", "APP_ID"]
