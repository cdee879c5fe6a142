"""Builds the Faust app from the settings and wires every service into it.

The path of one ``OrderPaid`` through the worker, top to bottom:
``events.order.paid.v1`` → :func:`streams.batching.run_batches` →
:class:`streams.pipeline.Pipeline` (decode, dedup in :mod:`tables.dedup`,
:class:`agents.notifications.NotificationsService`, await acks, mark) → offsets
acknowledged → ``events.notification.sent.v1``.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from streams.commands import register_commands
from streams.metrics import Metrics
from streams.fastpath import make_fast_consumer, shared_topics
from streams.fetch_wait import install_fetch_max_wait
from streams.offsets import install_fetch_end_offsets
from streams.publisher import FaustPublisher
from streams.settings import WorkerSettings
from streams.services import SERVICE_WIRING, Context
from streams.topics import all_event_topics, raw_topic
from streams.web import register_web

log = logging.getLogger(__name__)

APP_ID = "order-streams"


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
    install_fetch_max_wait(settings.fetch_max_wait)
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
        producer_max_batch_size=512 * 1024,
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
    ctx = Context(
        app=app, settings=settings, metrics=Metrics(), publisher=FaustPublisher(app),
        topics=all_event_topics(app, partitions),
    )
    for name in settings.services:
        SERVICE_WIRING[name](ctx)
    if ctx.fast_routes:
        app.transport.Consumer = make_fast_consumer(
            ctx.fast_routes, shared_topics(app, ctx.fast_routes), ctx.metrics, settings.batch_size
        )

    @app.task
    async def declare_topics() -> None:
        """Topics that are only written, declared up front with the right partitions."""
        for topic in ctx.declared:
            await topic.maybe_declare()

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def close_clients(app: Any, **kwargs: Any) -> None:
        for close in ctx.closers:
            await close()

    register_web(app, ctx.metrics, ctx.tables.get("order-state"), ctx.tables.get("inventory-stock"))
    ctx.metrics.consumer_lag.source = lambda: consumer_lag(app)
    register_commands(app, settings)
    app.context = ctx  # type: ignore[attr-defined]
    return app


__all__ = ["create_app", "broker_urls", "raw_topic", "APP_ID"]
