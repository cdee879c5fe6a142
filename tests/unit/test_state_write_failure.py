"""A table partition whose local store cannot be written is written again with a fresh
handle (issue 23, item 11). RocksDB keeps a write error — a full disk — for the life of
an open handle: before, every later write failed with it after space came back, and
the worker stayed 503 until restarted by hand. The integration test
(tests/integration/test_full_disk_recovery.py) fills a real tmpfs; this one makes the
handle fail the way RocksDB's does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.engine.ports import Writes
from streams.faust.compat import open_partitions, partition_db
from streams.engine.testing import FakePublisher

TABLE = "order-state"
DISK_FULL = "IO error: No space left on device: While appending to file: 000004.log"


class StuckHandle:
    """A rocksdict handle in RocksDB's background-error state: reads work, every write
    fails with the error that caused it, whatever the disk does meanwhile."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.writes = 0

    def write(self, batch: Any) -> None:
        self.writes += 1
        raise Exception(DISK_FULL)

    def get(self, *args: Any) -> Any:
        return self.db.get(*args)

    def close(self) -> None:
        self.db.close()


async def test_a_partition_that_failed_a_write_is_written_again_through_a_fresh_handle(tmp_path: Path) -> None:
    from streams.settings import WorkerSettings
    from streams.faust.stores import StateWriteFailed, TableStore
    from streams.assembly import create_app

    app = create_app(WorkerSettings(data_dir=tmp_path, kafka_broker="kafka://127.0.0.1:1"))
    tables = dict(app.worker.tables)
    store = TableStore(tables, FakePublisher(), max_value_bytes=256 * 1024)
    await store.write([Writes(TABLE, 1, {}, {b"before": b"1"})])
    stuck = StuckHandle(partition_db(tables[TABLE], 1))
    real_db = store.db
    store.db = lambda table, partition: stuck if (table, partition) == (TABLE, 1) else real_db(table, partition)

    with pytest.raises(StateWriteFailed) as failed:
        await store.write([Writes(TABLE, 1, {}, {b"during": b"2"})])
    assert "order-state[1]" in str(failed.value) and DISK_FULL in str(failed.value)
    assert 1 not in open_partitions(tables[TABLE])  # the stuck handle was closed and forgotten

    del store.db  # the disk has room again: the next use opens a fresh handle
    await store.write([Writes(TABLE, 1, {}, {b"during": b"2"})])
    assert store.read(TABLE, 1, [b"before", b"during"]) == [b"1", b"2"]
    assert stuck.writes == 1
