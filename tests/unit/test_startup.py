"""Start-up (issue 21 item 4): what the worker skips or does at once at start, and the
rules that keep it safe (streams/faust/compat.py ``EngineTableManager``, ``EngineStore``)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from streams.faust import compat as faust_compat
from streams.settings import WorkerSettings


@pytest.fixture
def app(tmp_path: Path) -> Any:
    from streams.assembly import create_app

    return create_app(WorkerSettings(data_dir=tmp_path, kafka_broker="kafka://127.0.0.1:1"))


def test_the_worker_s_table_manager_is_the_engine_s(app: Any) -> None:
    assert isinstance(app.tables, faust_compat.EngineTableManager)
    assert set(app.tables) == set(app.worker.tables)  # every table defined while the app is built


async def test_tables_register_without_a_fixed_sleep_after_every_topic_was_declared_at_once(
        app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's manager sleeps a second before it registers the tables (the consumer
    subscribes only after), then declares topics one at a time. Ours: no sleep, every
    declaration in flight together, and the broker's metadata listing them all, before
    the tables register."""
    manager = app.tables
    for agent in app.agents.values():  # what the agents do as they start, before the tables
        app.topics.add(agent.channel)
    topics = [c for c in manager.app.topics if c.internal] + [t.changelog_topic for t in manager.values()]
    assert len(topics) >= 4 + 8  # the changelogs, the sources and retry tiers
    started: list[Any] = []
    all_started = asyncio.Event()
    order: list[str] = []

    async def declare(topic: Any) -> None:
        started.append(topic)
        if len(started) == len(topics):
            all_started.set()
        # one at a time, the first declaration would wait here for ever (deadline: fail)
        await asyncio.wait_for(all_started.wait(), 10)
        order.append("declared")

    async def no_sleep(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the table manager slept at start-up")

    async def update_channels() -> None:
        order.append("tables registered")

    async def recovery_start() -> None:
        order.append("recovery started")

    async def listed(app: Any, names: set[str], *, timeout: float) -> bool:
        order.append("listed")
        assert names == {n for t in topics for n in t.topics}
        return True

    monkeypatch.setattr(faust_compat, "wait_until_listed", listed)
    for topic in topics:
        topic.maybe_declare = lambda topic=topic: declare(topic)
    manager.sleep = no_sleep
    manager._update_channels = update_channels
    manager.recovery.start = recovery_start
    await manager.on_start()
    assert order == ["declared"] * len(topics) + ["listed", "tables registered", "recovery started"]


async def test_a_declaration_that_fails_at_once_is_left_to_faust_s_own(app: Any) -> None:
    manager = app.tables
    calls: list[str] = []

    async def fail() -> None:
        raise ConnectionError("broker gone")

    async def update_channels() -> None:
        calls.append("tables registered")

    async def recovery_start() -> None:
        calls.append("recovery started")

    for table in manager.values():
        table.changelog_topic.maybe_declare = fail
    manager._update_channels = update_channels
    manager.recovery.start = recovery_start
    await manager.on_start()
    assert calls == ["tables registered", "recovery started"]


def test_revoking_nothing_skips_faust_s_full_collection(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import faust.stores.rocksdb as rocksdb_store

    collections: list[int] = []
    monkeypatch.setattr(rocksdb_store.gc, "collect", lambda *a: collections.append(1) or 0)
    table = app.worker.tables["order-state"]
    topic = faust_compat.changelog_topic(table)
    from faust.types import TP as FaustTP

    table.data.revoke_partitions(table, set())
    table.data.revoke_partitions(table, {FaustTP(topic, 1)})  # never opened: nothing to drop
    assert collections == []
    faust_compat.partition_db(table, 1)
    table.data.revoke_partitions(table, {FaustTP(topic, 1)})
    assert collections == [1] and 1 not in faust_compat.open_partitions(table)


async def test_a_read_while_a_thread_opens_the_partition_gets_that_handle_not_a_lock_error(app: Any) -> None:
    """The hazard of opening handles in threads: RocksDB locks a partition's directory,
    so a second open of it (a web read during the rebalance) fails while the thread
    holds it. The read waits for the thread and gets its handle."""
    table = app.worker.tables["order-state"]
    store = table.data
    real_open = store._open_for_partition
    opened, proceed = threading.Event(), threading.Event()

    def gated_open(partition: int) -> Any:
        db = real_open(partition)  # the directory is locked from here
        opened.set()
        assert proceed.wait(30)
        return db

    store._open_for_partition = gated_open
    opening = asyncio.ensure_future(store.open_in_thread(0))
    assert await asyncio.to_thread(opened.wait, 30)
    store._open_for_partition = real_open
    result: dict[str, Any] = {}
    reading = threading.Event()

    def read() -> None:
        reading.set()
        try:
            result["db"] = store._db_for_partition(0)
        except Exception as exc:  # a RocksDB lock error without the wait
            result["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    assert reading.wait(30)
    await asyncio.to_thread(reader.join, 0.5)  # without the wait the read has failed by now
    proceed.set()
    await asyncio.wait_for(opening, 30)
    await asyncio.to_thread(reader.join, 30)
    assert "error" not in result, result
    assert result["db"] is faust_compat.open_partitions(table)[0]


async def test_every_newly_assigned_active_partition_is_open_before_faust_s_rebalance(app: Any) -> None:
    from faust.types import TP as FaustTP

    manager = app.tables
    seen: dict[str, set[int]] = {}

    async def faust_rebalance(self: Any, assigned: Any, revoked: Any, newly: Any, generation_id: int = 0) -> None:
        for name, table in self.items():
            seen[name] = set(faust_compat.open_partitions(table))

    tps = {FaustTP(faust_compat.changelog_topic(t), p) for t in manager.values() for p in (0, 2)}
    tps.add(FaustTP("events.order.paid.v1", 1))  # not a changelog: no handle
    original = type(manager).__mro__[1].on_rebalance
    try:
        type(manager).__mro__[1].on_rebalance = faust_rebalance
        await manager.on_rebalance(tps, set(), tps, 1)
    finally:
        type(manager).__mro__[1].on_rebalance = original
    assert seen == {name: {0, 2} for name in manager}


async def test_a_topic_declared_without_an_error_is_not_declared_again(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust declares a topic at every step that names it, a Metadata round trip each
    even when it exists; the worker's producer declares each once per process, and
    tries one that failed again."""
    from faust.transport.drivers.aiokafka import Producer

    producer = app.producer
    assert isinstance(producer, faust_compat.EngineProducer)
    calls: list[str] = []
    failing = {"b"}

    async def declare(self: Any, topic: str, partitions: int, replication: int, **kwargs: Any) -> None:
        calls.append(topic)
        if topic in failing:
            raise ConnectionError("broker gone")

    monkeypatch.setattr(Producer, "create_topic", declare)
    for topic in ("a", "a", "b"):
        try:
            await producer.create_topic(topic, 4, 1)
        except ConnectionError:
            pass
    failing.clear()
    await producer.create_topic("b", 4, 1)
    await producer.create_topic("b", 4, 1)
    assert calls == ["a", "b", "b"]


async def test_the_start_waits_until_the_broker_lists_every_declared_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A topic just created may be missing from the broker's metadata for a moment; a
    consumer that joined then was assigned none of it for minutes."""
    shown: list[set[str]] = [{"a"}, {"a", "b"}, {"a", "b", "c"}]
    asked: list[int] = []

    class Cluster:
        def __init__(self, topics: set[str]) -> None:
            self.topics = topics

        def partitions_for_topic(self, name: str) -> set[int] | None:
            return {0, 1} if name in self.topics else None

    class Client:
        async def fetch_all_metadata(self) -> Cluster:
            asked.append(1)
            return Cluster(shown[min(len(asked), len(shown)) - 1])

    class Producer:
        client = Client()

    monkeypatch.setattr(faust_compat, "aiokafka_producer", lambda app: Producer())
    assert await faust_compat.wait_until_listed(object(), {"a", "b", "c"}, timeout=30)
    assert len(asked) == 3
    asked.clear()
    shown[:] = [{"a"}]
    assert not await faust_compat.wait_until_listed(object(), {"a", "b"}, timeout=0)


@pytest.mark.parametrize("cluster_id, members, held", [
    ("tansu_cluster", [b"m"], True),   # a restart on Tansu: the old member may still be listed
    ("tansu_cluster", [], False),      # a first start: nobody in the group
    ("u2mdNY3oQ6yvTuGoqyrAVA", [b"m"], False),  # Apache Kafka: no such pause
])
async def test_the_join_is_held_only_on_tansu_with_members_in_the_group(
        monkeypatch: pytest.MonkeyPatch, cluster_id: str, members: list[bytes], held: bool) -> None:
    class Client:
        def get_random_node(self) -> int:
            return 1

        async def send(self, node: int, request: Any) -> Any:
            if type(request).__name__ == "MetadataRequest":
                return type("Metadata", (), {"cluster_id": cluster_id})()
            return type("Groups", (), {"groups": [(0, "order-streams", "Stable", "consumer", "rr", members)]})()

    class Producer:
        client = Client()

    class App:
        class conf:
            broker_session_timeout = 8.0
            id = "order-streams"

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(faust_compat, "aiokafka_producer", lambda app: Producer())
    monkeypatch.setattr(faust_compat, "_process_started", lambda: faust_compat.time.monotonic())
    monkeypatch.setattr(faust_compat.asyncio, "sleep", sleep)
    waited = await faust_compat.hold_join_on_tansu(App())
    assert (waited > 3.5 and slept and slept[0] == waited) if held else (waited == 0 and not slept)
