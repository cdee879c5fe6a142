"""Every private Faust/aiokafka name streams/faust/compat.py relies on still exists and
does what the engine relies on (faust-streaming and aiokafka are pinned; an upgrade
that renames one fails here, not silently in production)."""

from __future__ import annotations

import inspect
import random
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from streams.faust import compat as faust_compat
from streams.engine.ports import Indexer
from streams.engine.records import TP
from streams.engine.keys import key_partition, murmur2
from streams.settings import WorkerSettings


@pytest.fixture
def app(tmp_path: Path) -> Any:
    from streams.assembly import create_app

    return create_app(WorkerSettings(data_dir=tmp_path, kafka_broker="kafka://127.0.0.1:1"))


def test_the_pinned_versions_are_the_installed_ones() -> None:
    for name, pinned in faust_compat.PINNED.items():
        assert version(name) == pinned, f"{name} {version(name)} is not the pinned {pinned}: check faust_compat"


def test_consumer_hooks_exist_on_faust_s_consumer() -> None:
    from faust.transport.consumer import Consumer as Base
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer

    for name in ("_wait_next_records", "perform_seek", "seek_to_committed", "wait_empty",
                 "on_partitions_revoked", "on_partitions_assigned", "pause_partitions", "resume_partitions",
                 "seek", "earliest_offsets", "highwaters", "_new_consumer_thread"):
        assert callable(getattr(Consumer, name)), name
    assert inspect.iscoroutinefunction(Base._wait_next_records)
    assert list(inspect.signature(Base._wait_next_records).parameters) == ["self", "timeout"]
    for name in ("_create_consumer", "_highwaters", "_ensure_consumer"):
        assert callable(getattr(AIOKafkaConsumerThread, name)), name


def test_acknowledged_ranges_are_what_faust_commits(app: Any) -> None:
    """acknowledge_range writes Faust's offset bookkeeping; Faust's own _new_offset
    (what its commit loop commits) must then be the next offset after the range."""
    consumer = app.consumer
    assert isinstance(consumer, app.transport.Consumer)
    for name in ("_acked", "_acked_index", "_n_acked", "_committed_offset", "_read_offset", "_commit_every"):
        assert hasattr(consumer, name), name
    tp = consumer._new_topicpartition("events.order.paid.v1", 2)
    faust_compat.acknowledge_range(consumer, tp, 0, 499)
    faust_compat.acknowledge_range(consumer, tp, 500, 999)
    assert consumer._n_acked == 1000 and faust_compat.read_offset(consumer, tp) == 999
    assert faust_compat.commit_due(consumer)  # broker_commit_every=1000
    assert consumer._new_offset(tp) == 1000
    consumer._committed_offset[tp] = 1000
    faust_compat.acknowledge_range(consumer, tp, 990, 1009)  # a batch re-acknowledged after a seek back
    assert consumer._new_offset(tp) == 1010


def test_the_engine_consumer_and_thread_are_subclasses_with_our_hooks(app: Any) -> None:
    consumer = app.consumer
    thread = consumer._new_consumer_thread()
    assert type(thread).__name__ == "EngineConsumerThread"
    from faust.transport.drivers.aiokafka import Consumer

    assert type(consumer).perform_seek is not Consumer.perform_seek
    assert consumer.generation() == (app.rebalancing_count, app.consumer_generation_id)


def test_the_engine_store_is_faust_s_rocksdb_store_found_by_its_entry_point(app: Any) -> None:
    import faust.stores
    from faust.stores.rocksdb import Store

    assert faust.stores.by_name("engine") is faust_compat.EngineStore
    assert issubclass(faust_compat.EngineStore, Store)
    table = app.worker.tables["order-state"]
    assert isinstance(table.data, faust_compat.EngineStore)
    db = faust_compat.partition_db(table, 1)
    db.put(b"k", b"v")
    assert faust_compat.open_partitions(table)[1].get(b"k") == b"v"
    assert faust_compat.offset_key(table) == b"__faust\x00offset__"
    table.data.set_persisted_offset(_tp(table, 1), 41)
    assert db.get(faust_compat.offset_key(table)) == b"41"


def test_engine_store_writes_index_entries_for_what_faust_applies(app: Any) -> None:
    table = app.worker.tables["order-state"]
    table.indexer = Indexer(lambda key, value: [b"\x00t" + key])

    class Message:
        def __init__(self, key: bytes, value: bytes | None, offset: int) -> None:
            self.key, self.value, self.offset, self.partition = key, value, offset, 0
            self.tp = _tp(table, 0)

    class Event:
        def __init__(self, message: Message) -> None:
            self.message = message

    table.data.apply_changelog_batch([Event(Message(b"o-1", b"{}", 5)), Event(Message(b"o-2", None, 6))],
                                     lambda k: k, lambda v: v)
    db = faust_compat.partition_db(table, 0)
    assert db.get(b"o-1") == b"{}" and db.get(b"\x00to-1") == b"1" and db.get(b"\x00to-2") is None
    assert table.data.persisted_offset(_tp(table, 0)) == 6


def test_recovery_offsets_the_bulk_loader_moves_are_recovery_attributes(app: Any) -> None:
    recovery = app.tables.recovery
    for name in ("active_offsets", "standby_offsets", "active_tps", "completed"):
        assert hasattr(recovery, name), name


async def test_producer_and_client_names() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from faust.transport.drivers.aiokafka import Producer
    from faust.types.tuples import ack_lock

    assert callable(Producer._ensure_producer)
    assert callable(AIOKafkaProducer.create_batch) and callable(AIOKafkaProducer.send_batch)
    assert hasattr(ack_lock, "__enter__")
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1234)
    assert consumer._fetch_max_wait_ms == 1234 and consumer._client is faust_compat.aiokafka_client(consumer)


async def test_fetch_position_is_aiokafka_s_position_behind_faust_s_consumer_thread() -> None:
    """consumer_lag's fetch position: Faust's consumer ``_thread`` holds the aiokafka
    consumer as ``_consumer``; its ``_subscription`` holds each partition's position
    (what aiokafka's fetcher moves past transaction markers)."""
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "_consumer" in AIOKafkaConsumerThread.__annotations__
    aio = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    tp = TopicPartition("t", 0)
    faust_side = SimpleNamespace(_thread=SimpleNamespace(_consumer=aio))
    assert faust_compat.fetch_position(faust_side, tp) is None  # not assigned
    aio.assign([tp])
    assert faust_compat.fetch_position(faust_side, tp) is None  # no position yet
    aio._subscription.seek(tp, 42)
    assert faust_compat.fetch_position(faust_side, tp) == 42
    assert faust_compat.fetch_position(SimpleNamespace(), tp) is None  # no thread: not started


def test_apply_click_options_adds_the_options_to_a_click_command() -> None:
    import click
    from faust.cli import option

    command = faust_compat.apply_click_options([option("--limit", type=int, default=3)])(
        click.command()(lambda limit: None))
    assert [p.name for p in command.params] == ["limit"] and command.params[0].default == 3


def test_faust_settings_the_web_surface_relies_on(app: Any) -> None:
    conf = app.conf
    assert conf.web_bind == "127.0.0.1" and conf.web_host == "127.0.0.1"
    assert conf.web_tables_enabled is False and conf.web_router_enabled is False


def test_murmur2_is_aiokafka_s_default_partitioner() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        assert murmur2(key) == aiokafka_murmur2(key)
        assert key_partition(key, 4) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % 4


def _tp(table: Any, partition: int) -> Any:
    from faust.types import TP as FaustTP

    return FaustTP(faust_compat.changelog_topic(table), partition)


def test_engine_tp_equals_faust_tp() -> None:
    from faust.types import TP as FaustTP

    assert TP("t", 1) == FaustTP("t", 1) and hash(TP("t", 1)) == hash(FaustTP("t", 1))


def test_a_header_with_a_null_value_becomes_empty() -> None:
    """Regression (found by the fuzzer): a header with a null value crashed every send
    of its batch (len(None)) and stalled the partition."""
    from types import SimpleNamespace

    record = SimpleNamespace(topic="t", partition=0, offset=1, key=b"k", value=b"v", timestamp=5,
                             headers=[("a", None), ("b", b"x")])
    [converted] = faust_compat.to_records([record])
    assert dict(converted.headers) == {"a": b"", "b": b"x"}


async def test_broker_round_trip_asks_each_known_broker_for_the_worker_s_topics_until_one_answers() -> None:
    """The health probe: the producer's public ``client`` (``send``, ``cluster.brokers()``),
    reached through Faust's private ``_ensure_producer``; a Metadata request for the
    worker's topics, never creating one."""
    from types import SimpleNamespace

    from aiokafka import AIOKafkaProducer
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaConnectionError, RequestTimedOutError
    from aiokafka.protocol.metadata import MetadataRequest, MetadataRequest_v1

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    assert isinstance(producer.client, AIOKafkaClient)
    assert inspect.iscoroutinefunction(AIOKafkaClient.send) and callable(producer.client.cluster.brokers)
    assert MetadataRequest(["t"], allow_auto_topic_creation=False).build(MetadataRequest_v1).topics == ["t"]

    sent: list[tuple[int, Any]] = []

    class Client:
        def __init__(self, nodes: list[int], answering: set[int]) -> None:
            self.cluster = SimpleNamespace(brokers=lambda: [SimpleNamespace(nodeId=n) for n in nodes])
            self.answering = answering

        async def send(self, node: int, request: Any) -> Any:
            sent.append((node, request))
            if node not in self.answering:
                raise RequestTimedOutError()
            return object()

    def app_with(client: Client) -> Any:
        return SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: SimpleNamespace(client=client)))

    assert await faust_compat.broker_round_trip(app_with(Client([1, 2, 3], answering={2})), ["a", "b"]) == []
    assert [n for n, _ in sent] == [1, 2] and all(isinstance(r, MetadataRequest) for _, r in sent)
    assert all(r._topics == ["a", "b"] and r._allow_auto_topic_creation is False for _, r in sent)
    with pytest.raises(RequestTimedOutError):
        await faust_compat.broker_round_trip(app_with(Client([1], answering=set())))
    with pytest.raises(KafkaConnectionError):
        await faust_compat.broker_round_trip(app_with(Client([], answering=set())))


def test_leaderless_reads_aiokafka_s_metadata_response_layout() -> None:
    """Partitions with leader -1 or a partition error are leaderless, in v0 and v1+
    answers (aiokafka's MetadataResponse structs); a topic the broker does not know yet
    (UNKNOWN_TOPIC_OR_PARTITION) is not."""
    from aiokafka.protocol.metadata import MetadataResponse_v0, MetadataResponse_v1, MetadataResponse_v5

    parts = [(0, 0, 1, [1], [1]), (0, 1, -1, [2], []), (5, 2, 3, [3], [3])]  # ok, no leader, LEADER_NOT_AVAILABLE
    v0 = MetadataResponse_v0([(1, "h", 9)], [(0, "t", parts), (3, "missing", [])])
    v1 = MetadataResponse_v1([(1, "h", 9, None)], 1, [(0, "t", False, parts), (3, "missing", False, [])])
    v5 = MetadataResponse_v5(0, [(1, "h", 9, None)], None, 1,
                             [(0, "t", False, [(*p, []) for p in parts]), (3, "missing", False, [])])
    for response in (v0, v1, v5):
        assert faust_compat.leaderless(response) == [("t", 1), ("t", 2)]
    assert faust_compat.leaderless(object()) == []


def test_reopen_partition_db_closes_the_handle_and_faust_opens_a_fresh_one_with_the_data(app: Any) -> None:
    """A full disk leaves a RocksDB handle failing every write for good; the store
    closes it and Faust's ``_db_for_partition`` opens a new one (the lock released,
    what was written before still there)."""
    table = app.worker.tables["order-state"]
    old = faust_compat.partition_db(table, 2)
    old.put(b"k", b"v")
    faust_compat.reopen_partition_db(table, 2)
    assert 2 not in faust_compat.open_partitions(table)
    fresh = faust_compat.partition_db(table, 2)
    assert fresh is not old and fresh.get(b"k") == b"v"
    fresh.put(b"k2", b"v2")
    faust_compat.reopen_partition_db(table, 3)  # a partition never opened: nothing to do


def test_read_any_header_key_reads_a_batch_whose_header_key_is_not_utf8() -> None:
    """aiokafka's fetcher builds ``MemoryRecords`` and iterates its batches; its C reader
    raises UnicodeDecodeError on a header key that is not UTF-8 (what crash-looped the
    worker). After :func:`read_any_header_key`, every record of the batch arrives, the
    key surrogate-escaped, compressed batches and CRCs as before."""
    import struct

    from aiokafka.consumer import fetcher
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    from streams.engine import headers as H
    from streams.faust.compat import read_any_header_key

    class RawKey(str):
        def encode(self, *args, **kwargs):  # the pure-Python builder writes these bytes
            return b"\xff\xfe"

    def batch(base: int, headers: list, compression: int = 0) -> bytes:
        b = _DefaultRecordBatchBuilderPy(magic=2, compression_type=compression, is_transactional=0,
                                         producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        for i, h in enumerate(headers):
            b.append(i, timestamp=1000 + i, key=b"k%d" % i, value=b"v%d" % i, headers=h)
        raw = bytes(b.build())
        return struct.pack(">q", base) + raw[8:]

    data = (batch(0, [[("a", b"1")], [(RawKey("x"), b"2"), ("t", b"1"), ("t", b"2")], [("b", None)]])
            + batch(3, [[(RawKey("y"), b"z")]], compression=1))
    from aiokafka.record.memory_records import MemoryRecords as AiokafkaRecords

    with pytest.raises(UnicodeDecodeError):
        records = AiokafkaRecords(data)
        while records.has_next():
            list(records.next_batch())
    read_any_header_key()
    read_any_header_key()  # idempotent
    records = fetcher.MemoryRecords(data)
    got = []
    while records.has_next():
        b = records.next_batch()
        assert b.validate_crc()
        got += [(r.offset, r.timestamp, r.key, r.headers) for r in b]
    raw = "\udcff\udcfe"
    assert got == [(0, 1000, b"k0", [("a", b"1")]),
                   (1, 1001, b"k1", [(raw, b"2"), ("t", b"1"), ("t", b"2")]),
                   (2, 1002, b"k2", [("b", None)]),
                   (3, 1000, b"k0", [(raw, b"z")])]
    assert H.is_raw(raw) and H.raw_key(raw) == b"\xff\xfe"
    # the bench's bare baselines measure aiokafka's own reader, then the tolerant one is back
    with faust_compat.aiokafka_records():
        assert fetcher.MemoryRecords is AiokafkaRecords
    assert fetcher.MemoryRecords is faust_compat.TolerantMemoryRecords
    assert H.writable([(raw, b"2"), ("t", None)]) == (("x-raw-key:fffe", b"2"), ("t", b""))
