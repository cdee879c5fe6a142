"""The composition root (``streams.app`` is the Faust app it builds; this module is not named ``app.py`` because ``faust -A streams`` looks up the attribute ``streams.app``, which a submodule of that name would shadow): settings → registry → Faust app, tables, engine, web, commands.

Each service is built from its registration (:mod:`streams.registry`); nothing here
names a service. The path of one ``OrderPaid`` through the worker, top to bottom:
``events.order.paid.v1`` → the engine consumer (:mod:`streams.faust.consumer`) →
:class:`streams.engine.position.Driver` (position rules, batches) →
:class:`streams.engine.pipeline.Pipeline` of ``notifications`` (decode, dedup,
:class:`agents.notifications.NotificationsService`, acks, state) *and* of
``order-state`` (:class:`agents.order_state.OrderStateService`) → the batch's
offsets acknowledged → ``events.notification.sent.v1``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from streams import registry
from streams.engine.health import Health, watch_broker
from streams.engine.pipeline import Pipeline
from streams.engine.position import Driver
from streams.engine.routing import RetryPolicy
from streams.engine.transactions import EXACTLY_ONCE
from streams.engine.streamtime import ProcessClock
from streams.faust.compat import EngineProducer, EngineTableManager, broker_round_trip, read_any_header_key
from streams.faust.consumer import engine_consumer_class
from streams.faust.publisher import KafkaPublisher
from streams.faust.transactions import (
    broker_is_tansu, faust_environment, make_transactions, refuse_without_transactions, transactional_id_refused,
)
from streams.faust.recovery import BulkLoader, Progress
from streams.faust.stores import EngineTable, TableStore
from streams.http.console import register_console
from streams.http.web import register_web
from streams.logs import QUIET_LOGGERS, build_config
from streams.metrics import Metrics
from streams.settings import WorkerSettings
from streams.worker import Worker, WorkerApp, consumer_lag, retry_age

log = logging.getLogger(__name__)

APP_ID = "order-streams"
#: Libraries that print ~200 lines at INFO while a worker starts; what an operator
#: needs from them is a warning or an error.
WORKER_QUIET = {**QUIET_LOGGERS, "faust": "WARNING", "mode": "WARNING", "aiokafka": "ERROR",
                # Faust's services log under the module that subclasses them (the app, its
                # tables and consumer); these modules log nothing of their own below WARNING
                "streams.worker": "WARNING", "streams.faust.stores": "WARNING",
                "streams.faust.compat": "WARNING", "streams.faust.consumer": "WARNING"}


def check_kafka_access_first(app: WorkerApp, settings: WorkerSettings) -> None:
    """Before the worker's first Kafka client: credentials the broker refuses end it
    with one line (streams.kafka_connection), exit 1, instead of a traceback."""
    first_start = app.on_first_start

    async def on_first_start() -> None:
        from streams.kafka_connection import KafkaAccessError

        try:
            await settings.check_access(settings.bootstrap)
        except KafkaAccessError as exc:
            print(f"order-streams: {exc}", file=sys.__stderr__, flush=True)  # not mode's log redirect
            raise SystemExit(1) from None
        await first_start()

    app.on_first_start = on_first_start  # type: ignore[method-assign]


def create_app(settings: WorkerSettings) -> WorkerApp:
    read_any_header_key()  # every reader of this process: worker, dlq, console
    app = new_app(settings)
    worker = build_worker(app, settings)
    check_kafka_access_first(app, settings)
    if settings.processing_guarantee == EXACTLY_ONCE:  # one line and exit 1 on Tansu
        refuse_without_transactions(
            app, lambda: broker_is_tansu(settings.bootstrap, settings.aiokafka_kwargs()),
            lambda: transactional_id_refused(settings.bootstrap, settings.aiokafka_kwargs(), app.conf.id))
    observe(app, worker)
    register_web(app, worker)
    register_console(app, worker)  # after the web's routes and auth middleware
    from streams.ops.commands import register_commands

    register_commands(app, settings)
    app.worker = worker
    return app


def new_app(settings: WorkerSettings) -> WorkerApp:
    """The Faust app with the worker's settings (nothing registered on it yet)."""
    partitions = settings.topic_partitions
    return WorkerApp(
        APP_ID,
        # Faust reads env vars too and lets them win: not PROCESSING_GUARANTEE (the
        # engine's, streams/faust/transactions.py), and Faust's own stays off
        env=faust_environment(os.environ),
        processing_guarantee="at_least_once",
        broker=settings.broker_urls,
        # Faust's RocksDB store plus the engine's index entries for what Faust applies
        # itself (streams.faust.compat.EngineStore, a ``faust.stores`` entry point).
        store="engine://",
        Table=EngineTable,  # a table that carries its values' Indexer (streams.engine.ports)
        # no fixed 1 s sleep before the tables register; topics declared at once (start-up)
        TableManager=EngineTableManager,
        datadir=str(settings.data_dir),
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        canonical_url=settings.web_url,
        web_tables_enabled=settings.web_table_views,
        web_router_enabled=settings.web_table_views,
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
        # Fast rejoin after a restart without false evictions on a busy machine
        # (measured: docs/design-notes.md, "Start-up and group membership").
        broker_session_timeout=8.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=8.0,
        broker_request_timeout=30.0,
        autodiscover=False,
        broker_credentials=settings.faust_credentials(),
        logging_config=build_config(settings.log_format, settings.log_level, "worker", loggers=WORKER_QUIET),
    )


def build_worker(app: WorkerApp, settings: WorkerSettings) -> Worker:
    """The services of ``SERVICES`` (a loop over the registry), their tables, the engine
    (pipelines, driver, publisher, store), bulk recovery and the engine's consumer."""
    partitions = settings.topic_partitions
    metrics = Metrics()
    health = Health(broker_loss_timeout=settings.broker_loss_timeout)
    ctx = registry.BuildContext(settings, metrics)
    services = {name: registry.registration(name).build(ctx) for name in settings.services}
    specs = [service.spec for service in services.values()]
    tables = {name: define_table(app, name, partitions, durability_config(settings))
              for spec in specs for name in spec.tables}
    publisher = KafkaPublisher(app, max_message_bytes=settings.max_message_bytes)
    store = TableStore(tables, publisher, max_value_bytes=settings.state_max_bytes)
    policy = RetryPolicy(settings.retry_delays)
    allowed = frozenset(registry.topics_written(policy.tiers)) | {store.changelog(t) for t in tables}
    clock = ProcessClock()  # decisions use stream time; see streams/engine/streamtime.py
    pipelines = [
        Pipeline(service, publisher=publisher, store=store, counts=metrics, policy=policy,
                 allowed=allowed.__contains__, ttl_ms=int(settings.dedup_ttl * 1000), health=health,
                 clock=clock)
        for service in services.values()
    ]
    # PROCESSING_GUARANTEE=exactly_once: a transaction per batch and input partition
    transactions = (make_transactions(app, bootstrap=settings.bootstrap, client_kwargs=settings.aiokafka_kwargs(),
                                      max_request_size=settings.max_message_bytes,
                                      transaction_timeout_ms=settings.transaction_timeout_ms)
                    if settings.processing_guarantee == EXACTLY_ONCE else None)
    driver = Driver(pipelines, batch_size=settings.batch_size, health=health, clock=clock,
                    maintenance_interval=settings.maintenance_interval, publisher=publisher,
                    transactions=transactions)
    indexers = {name: indexer for pipeline in pipelines for name, indexer in pipeline.indexers().items()}
    for name, indexer in indexers.items():
        tables[name].indexer = indexer  # Faust's own replay and standbys derive them too
    progress = Progress()
    loader = BulkLoader(tables, bootstrap=settings.bootstrap,
                        client_kwargs={**settings.aiokafka_kwargs(),  # exactly-once: committed records only
                                       **({"isolation_level": "read_committed"} if transactions else {})},
                        indexers=indexers, progress=progress,
                        max_fetch_bytes=settings.max_message_bytes,
                        budget=0.8 * app.conf.broker_request_timeout)
    app.transport.Producer = EngineProducer  # declares each topic once per process (start-up)
    app.transport.Consumer = engine_consumer_class(
        driver, fetch_max_wait=settings.fetch_max_wait,
        # unset: the broker is asked (streams.faust.compat.list_offsets_may_be_short)
        end_offsets_from_fetch=(settings.end_offsets_from_fetch
                                if "end_offsets_from_fetch" in settings.model_fields_set else None),
        empty_wait=settings.send_budget / 2, loader=loader, read_committed=transactions is not None,
    )
    declare_topics(app, specs, policy, settings)
    return Worker(app, settings, metrics, health, driver, store, services, tables, progress, ctx.closers)


def observe(app: WorkerApp, worker: Worker) -> None:
    """The worker's background tasks (the broker watch, the start-up line), its metrics'
    sources, and its clients closed at shutdown."""
    settings, metrics, driver = worker.settings, worker.metrics, worker.driver

    @app.task
    async def announce() -> None:
        log.info("worker web server on %s (WEB_HOST=%s): /health /metrics%s", settings.web_url, settings.web_host,
                 "".join(f" {r}" for r in ("/orders/{id}", "/inventory/{sku}", "/console")))

    # the worker's own topics: what it reads (sources, retry tiers) and writes (derived, DLQs)
    topics = sorted(driver.topics | {t for service in worker.services.values()
                                     for t in (*service.spec.derived, service.spec.dlq)})

    @app.task
    async def watch_broker_round_trips() -> None:
        """/health: 503 after BROKER_LOSS_TIMEOUT without an answer from the broker, or
        with a partition of the worker's topics without a leader."""
        await watch_broker(worker.health, lambda: broker_round_trip(app, topics))

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def close_clients(app: Any, **kwargs: Any) -> None:
        for close in worker.closers:
            await close()

    metrics.consumer_lag.source = lambda: consumer_lag(app)
    metrics.recovery_remaining.source = worker.recovery.rows
    metrics.seek_backs.source = lambda: sorted(driver.seek_backs.items())
    metrics.rerouted.source = lambda: sorted(driver.rerouted.items())
    for name in worker.services:
        metrics.oldest_retry_age.labels(name).set_function(
            lambda name=name: retry_age(driver.oldest_waiting_ms(name)))


def define_table(app: Any, name: str, partitions: int, topic_config: dict[str, str] | None = None) -> Any:
    """A service's table: raw keys (the topics' key bytes, so ``table_route`` hashes a
    key to its owner) and raw values (the engine encodes them); its changelog (compacted,
    by Faust) gets ``topic_config`` too."""
    return app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes,
                     options={"driver": "rocksdict"}, help=f"state of the {name} table",
                     extra_topic_configs=topic_config or {})


def declare_topics(app: Any, specs: list[registry.ServiceSpec], policy: RetryPolicy,
                   settings: WorkerSettings) -> None:
    """Agents (one per service and topic — its sources and retry tiers — in the
    consumer group, listed by ``faust agents``); retry, DLQ and derived topics
    declared up front. The engine consumer takes every record of these topics before Faust's
    per-message path, so an agent never receives one."""
    partitions = settings.topic_partitions
    retry_config, dlq_config = topic_configs(settings)
    written: list[Any] = []
    for spec in specs:
        retries = [raw_topic(app, t, partitions, retry_config) for t in spec.retry_topics(policy.tiers)]
        sources = [raw_topic(app, t, partitions, durability_config(settings)) for t in spec.sources]
        written += [raw_topic(app, spec.dlq, partitions, dlq_config), *retries]
        written += [raw_topic(app, t, partitions, durability_config(settings)) for t in spec.derived]
        for topic in (*sources, *retries):  # one agent per topic: `faust agents` lists each
            app.agent(topic, name=f"{spec.name}@{topic.get_topic_name()}")(_engine_owned(spec.name))
        written += sources

    @app.task
    async def declare_written_topics() -> None:
        for topic in written:
            await topic.maybe_declare()


def _engine_owned(name: str) -> Callable[[Any], Awaitable[None]]:
    async def agent(stream: Any) -> None:
        """Records of this service's topics are processed by the engine (never here)."""
        async for event in stream.events():  # pragma: no cover - would be an engine bug
            log.error("%s: a record reached the Faust agent (%s[%d]@%d); it is left unacknowledged",
                      name, event.message.topic, event.message.partition, event.message.offset)
            await asyncio.Event().wait()

    agent.__name__ = name.replace("-", "_")
    return agent


def durability_config(settings: WorkerSettings) -> dict[str, str]:
    """``min.insync.replicas`` of every topic the worker creates: with
    ``TOPIC_REPLICATION_FACTOR`` 3, a write (``acks=all``) needs 2 replicas, so one broker
    may be lost without losing an acknowledged record or stopping the writes."""
    return {"min.insync.replicas": str(max(1, settings.topic_replication_factor - 1))}


def topic_configs(settings: WorkerSettings) -> tuple[dict[str, str], dict[str, str]]:
    """The topic configs the worker creates its retry and DLQ topics with: records as
    large as it may produce, and an explicit retention each (the broker's default, 7 days
    on Apache Kafka, would silently decide how long dead letters stay)."""
    big = {"max.message.bytes": str(settings.max_message_bytes), "cleanup.policy": "delete",
           **durability_config(settings)}
    return ({**big, "retention.ms": str(settings.retry_retention * 1000)},
            {**big, "retention.ms": str(settings.dlq_retention * 1000)})


def raw_topic(app: Any, name: str, partitions: int, config: dict[str, Any] | None = None) -> Any:
    """A topic of the engine, raw bytes both ways. ``internal=True`` only makes Faust's
    conductor create it (partitions, ``config``) *before* the consumer subscribes: on
    Apache Kafka a source or retry topic that did not exist yet was auto-created by the
    subscription's Metadata request with the broker's defaults (a 7-day retry retention,
    its ``num.partitions``), and the worker was assigned nothing until its next metadata
    refresh (5 minutes). Faust never alters a topic that exists."""
    return app.topic(name, partitions=partitions, key_serializer="raw", value_serializer="raw", config=config,
                     internal=True)
