"""One contract for the :class:`~streams.engine.ports.StateStore` port, run against the
fake the unit tests use (:class:`streams.engine.testing.MemoryStore`) and the adapter the
worker runs (:class:`streams.faust.stores.TableStore` on Faust's RocksDB tables, with a fake
publisher for the changelog). A behaviour the engine tests rely on from the fake must
hold for the real store too — and the other way round."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from streams.engine.ports import INDEX_PREFIX, BatchState, StateStore, TooLarge, Transaction, TransactionClosed, Writes
from streams.engine.testing import FakePublisher, MemoryStore

TABLE = "order-state"


async def wait_until(condition, what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` on the event loop; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.001)


class StateStoreContract:
    """Subclasses provide ``make_store`` and say where a table's changelog and its
    persisted offset are."""

    def make_store(self, publisher: FakePublisher, tmp_path: Path) -> StateStore:
        raise NotImplementedError

    def changelog(self, store: StateStore, table: str) -> str:
        raise NotImplementedError

    def persisted(self, store: StateStore, table: str, partition: int) -> int | None:
        raise NotImplementedError

    @pytest.fixture
    def publisher(self) -> FakePublisher:
        return FakePublisher()

    @pytest.fixture
    def store(self, publisher: FakePublisher, tmp_path: Path) -> StateStore:
        return self.make_store(publisher, tmp_path)

    async def test_nothing_is_written_locally_before_every_changelog_ack(self, publisher, store) -> None:
        publisher.auto_ack = False
        writing = asyncio.create_task(store.write([Writes(TABLE, 1, {b"o-1": b"a", b"o-2": b"b"}, {})]))
        await wait_until(lambda: len(publisher.pending()) == 2, "both changelog sends pending")
        publisher.release(1)
        # Nothing may happen now, so there is no event to wait for. Both stores write on
        # this event loop alone (no thread, no I/O once an ack is in), so ten passes of
        # the loop let the write take every step one ack allows (a handful of awaits).
        for _ in range(10):
            await asyncio.sleep(0)
        assert not writing.done() and store.read(TABLE, 1, [b"o-1", b"o-2"]) == [None, None]
        publisher.release()
        await writing
        assert store.read(TABLE, 1, [b"o-2", b"o-1", b"o-3"]) == [b"b", b"a", None]

    async def test_a_failed_changelog_ack_writes_nothing_locally(self, publisher, store) -> None:
        publisher.fail_acks = 1
        with pytest.raises(ConnectionError):
            await store.write([Writes(TABLE, 0, {b"o-1": b"a"}, {b"\x00t-local": b"1"})])
        assert store.read(TABLE, 0, [b"o-1", b"\x00t-local"]) == [None, None]

    async def test_changelog_records_go_to_the_table_partition_s_own_partition(self, publisher, store) -> None:
        await store.write([Writes(TABLE, 2, {b"o-1": b"a"}, {}), Writes(TABLE, 3, {b"o-9": None}, {})])
        sent = [(m.topic, m.partition, m.key, m.value) for m in publisher.sent]
        topic = self.changelog(store, TABLE)
        assert sent == [(topic, 2, b"o-1", b"a"), (topic, 3, b"o-9", None)]

    async def test_local_writes_send_no_changelog_record(self, publisher, store) -> None:
        await store.write([Writes(TABLE, 0, {}, {b"\x00t-1": b"1"})])
        assert publisher.sent == [] and store.read(TABLE, 0, [b"\x00t-1"]) == [b"1"]

    async def test_deletes_remove_values_and_are_tombstones_in_the_changelog(self, publisher, store) -> None:
        await store.write([Writes(TABLE, 0, {b"o-1": b"a", b"o-2": b"b"}, {b"\x00t-1": b"1"})])
        await store.write([Writes(TABLE, 0, {b"o-1": None}, {b"\x00t-1": None})])
        assert store.read(TABLE, 0, [b"o-1", b"o-2", b"\x00t-1"]) == [None, b"b", None]
        assert publisher.sent[-1].key == b"o-1" and publisher.sent[-1].value is None

    async def test_the_persisted_offset_is_the_last_record_written(self, publisher, store) -> None:
        await store.write([Writes(TABLE, 1, {b"o-1": b"a", b"o-2": b"b", b"o-3": b"c"}, {})])
        assert self.persisted(store, TABLE, 1) == 2
        await store.write([Writes(TABLE, 1, {b"o-4": b"d"}, {b"\x00t-4": b"1"})])
        assert self.persisted(store, TABLE, 1) == 3
        await store.write([Writes(TABLE, 1, {}, {b"\x00t-5": b"1"})])  # local only: no record, no move
        assert self.persisted(store, TABLE, 1) == 3

    async def test_partitions_are_separate(self, store) -> None:
        await store.write([Writes(TABLE, 0, {b"o-1": b"zero"}, {}), Writes(TABLE, 1, {b"o-1": b"one"}, {})])
        assert store.read(TABLE, 0, [b"o-1"]) == [b"zero"] and store.read(TABLE, 1, [b"o-1"]) == [b"one"]

    async def test_scan_is_in_key_order_from_start_before_stop_up_to_limit(self, store) -> None:
        keys = [INDEX_PREFIX + t.to_bytes(8, "big") + b"o" for t in (5, 1, 3, 9, 7)]
        await store.write([Writes(TABLE, 0, {b"o-1": b"a"}, dict.fromkeys(keys, b"1"))])
        stop = INDEX_PREFIX + (8).to_bytes(8, "big")
        assert [k for k, _ in store.scan(TABLE, 0, INDEX_PREFIX, stop, 10)] == sorted(keys)[:4]
        assert [k for k, _ in store.scan(TABLE, 0, INDEX_PREFIX, stop, 2)] == sorted(keys)[:2]
        assert store.scan(TABLE, 0, INDEX_PREFIX, INDEX_PREFIX + (1).to_bytes(8, "big"), 10) == []

    async def test_a_transaction_over_the_store_sees_its_own_writes_and_due_entries(self, store) -> None:
        await store.write([Writes(TABLE, 0, {b"o-1": b"old"}, {})])
        tx = Transaction(store, TABLE, 0)
        tx.set(b"o-1", b"new")
        tx.schedule(10, b"o-1")
        tx.schedule(20, b"o-2", durable=False)
        assert tx.get_many([b"o-1", b"o-2"]) == [b"new", None]
        await store.write([tx.writes()])
        later = Transaction(store, TABLE, 0)
        assert later.get(b"o-1") == b"new" and later.due(15, 10) == [(10, b"o-1")]
        later.unschedule(10, b"o-1")
        assert later.due(25, 10) == [(20, b"o-2")]

    async def test_a_transaction_refuses_writes_from_its_flush_on(self, publisher, store) -> None:
        publisher.auto_ack = False
        state = BatchState(store)
        tx = state.tx(TABLE, 0)
        tx.set(b"o-1", b"a")
        tx.schedule(10, b"o-1")
        late_writes = {"set": lambda: tx.set(b"o-1", b"late"), "delete": lambda: tx.delete(b"o-1"),
                       "schedule": lambda: tx.schedule(20, b"o-2"), "unschedule": lambda: tx.unschedule(10, b"o-1")}
        flushing = asyncio.create_task(state.flush())
        await wait_until(lambda: len(publisher.pending()) == 2, "the changelog sends pending")
        for name, write in late_writes.items():  # while the flush waits for its acks …
            with pytest.raises(TransactionClosed):
                write()
        publisher.release()
        assert await flushing == 2
        for name, write in late_writes.items():  # … and after it
            with pytest.raises(TransactionClosed, match=r"order-state\[0\]"):
                write()
        with pytest.raises(TransactionClosed):
            state.tx(TABLE, 1)  # a transaction opened now would never be flushed either
        assert tx.get(b"o-1") == b"a" and store.read(TABLE, 0, [b"o-1"]) == [b"a"]
        assert [(m.key, m.value) for m in publisher.sent] == [(b"o-1", b"a"), (INDEX_PREFIX + (10).to_bytes(8, "big") + b"o-1", b"1")]

    def test_a_value_over_the_limit_is_refused_before_anything_is_sent(self, publisher, store) -> None:
        tx = Transaction(store, TABLE, 0)
        with pytest.raises(TooLarge):
            tx.set(b"o-1", b"x" * (store.max_value_bytes + 1))
        assert publisher.sent == []


class TestMemoryStore(StateStoreContract):
    def make_store(self, publisher: FakePublisher, tmp_path: Path) -> StateStore:
        return MemoryStore(publisher)

    def changelog(self, store: StateStore, table: str) -> str:
        return f"{table}-changelog"

    def persisted(self, store: StateStore, table: str, partition: int) -> int | None:
        assert isinstance(store, MemoryStore)
        return store.persisted.get((table, partition))


class TestTableStore(StateStoreContract):
    def make_store(self, publisher: FakePublisher, tmp_path: Path) -> StateStore:
        from streams.settings import WorkerSettings
        from streams.faust.stores import TableStore
        from streams.assembly import create_app

        app = create_app(WorkerSettings(data_dir=tmp_path, kafka_broker="kafka://127.0.0.1:1"))
        self.tables: dict[str, Any] = dict(app.worker.tables)
        return TableStore(self.tables, publisher, max_value_bytes=256 * 1024)

    def changelog(self, store: StateStore, table: str) -> str:
        from streams.faust.compat import changelog_topic

        return changelog_topic(self.tables[table])

    def persisted(self, store: StateStore, table: str, partition: int) -> int | None:
        from streams.faust.compat import offset_key, partition_db

        raw = partition_db(self.tables[table], partition).get(offset_key(self.tables[table]))
        return None if raw is None else int(raw)
