"""The :class:`~streams.engine.ports.StateStore` on Faust's RocksDB tables.

Faust keeps what it is good at: declaring each table's changelog topic, assigning
its partitions with the source partitions, recovering them (and standbys) from the
changelog, and ``table_route``. Reads and writes of the engine go straight to the
table's per-partition rocksdict handles, with explicit partitions — Faust's
``table[key] = …`` needs a "current event" and writes its changelog one record at a
time.

:meth:`TableStore.write` is the commit protocol's last step (the protocol:
streams/engine/pipeline.py) and keeps the port's contract,
:meth:`streams.engine.ports.StateStore.write`. How, here: the changelog records go
to the table partition's changelog partition as record batches, and the persisted
offset is written in the same atomic rocksdict write batch as the partition's values.

A local write that fails (a full ``DATA_DIR``) raises :class:`StateWriteFailed` after
the partition's handle is closed (:func:`~streams.faust.compat.reopen_partition_db`):
RocksDB keeps such an error for the life of a handle, so only a fresh handle can
write once space is back (docs/design-notes.md, "The state store's offset"). The
caller writes the batch again (the changelog records again too: same keys and
values, so a compacted changelog holds the same table); the next use of the
partition opens a new handle, which fails until the disk can be written again and
then writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import rocksdict
from faust.tables import Table

from streams.engine.delivery import gather_acks
from streams.engine.ports import Indexer, Publisher, StateStore, Writes
from streams.engine.transactions import current
from streams.faust.compat import changelog_topic, offset_key, partition_db, reopen_partition_db


class StateWriteFailed(OSError):
    """A table partition's local store could not be written (or opened): the batch
    is written again; nothing of it is acknowledged meanwhile."""


class RdictStore(StateStore):
    """Reads and scans over one rocksdict per (table, partition): multi-get reads,
    iterator scans; :meth:`db` says which handle, subclasses say how to write."""

    def db(self, table: str, partition: int) -> Any:
        raise NotImplementedError

    def read(self, table: str, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        return list(self.db(table, partition).get(list(keys)))

    def scan(self, table: str, partition: int, start: bytes, stop: bytes,
             limit: int) -> list[tuple[bytes, bytes]]:
        it = self.db(table, partition).iter()
        it.seek(start)
        out: list[tuple[bytes, bytes]] = []
        while it.valid() and len(out) < limit:
            key = it.key()
            if key >= stop:
                break
            out.append((key, it.value()))
            it.next()
        return out


class TableStore(RdictStore):
    def __init__(self, tables: Mapping[str, Any], publisher: Publisher, *, max_value_bytes: int) -> None:
        self.tables = dict(tables)
        self.publisher = publisher
        self.max_value_bytes = max_value_bytes
        self._changelogs = {name: changelog_topic(t) for name, t in self.tables.items()}
        self._offset_keys = {name: offset_key(t) for name, t in self.tables.items()}

    def changelog(self, table: str) -> str:
        return self._changelogs[table]

    def db(self, table: str, partition: int) -> Any:
        return partition_db(self.tables[table], partition)

    async def write(self, writes: Sequence[Writes]) -> None:
        acks = []
        for w in writes:
            if w.durable:
                acks += await self.publisher.send_partition(self._changelogs[w.table], w.partition,
                                                            list(w.durable.items()))
        offsets = await gather_acks(acks) if acks else []  # 1
        failed = next((r for r in offsets if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        txn = current()
        if txn is not None:  # exactly-once: locally only once the transaction committed (engine T3)
            txn.after_commit(lambda: self._write_local(writes, offsets))
        else:
            self._write_local(writes, offsets)

    def _write_local(self, writes: Sequence[Writes], offsets: Sequence[Any]) -> None:
        done = 0
        for w in writes:  # 2 and 3, in one atomic write batch per table partition
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in w.durable.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            for key, value in w.local.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            if w.durable:
                last = offsets[done + len(w.durable) - 1]  # records of one partition are in order
                done += len(w.durable)
                batch.put(self._offset_keys[w.table], str(last).encode())
            try:
                self.db(w.table, w.partition).write(batch)
            except Exception as exc:
                reopen_partition_db(self.tables[w.table], w.partition)
                raise StateWriteFailed(f"local state {w.table}[{w.partition}] in DATA_DIR could not be written "
                                       f"({exc}); it is written again with a fresh handle") from exc



class EngineTable(Table):  # type: ignore[misc]
    """A Faust table (``faust.App(Table=EngineTable)``) that carries how the engine derives
    its local index entries from its values; :class:`~streams.faust.compat.EngineStore`
    writes them for every changelog record Faust applies itself. None: no index."""

    indexer: Indexer | None = None
