"""Processed idempotency keys: a RocksDB (rocksdict) table with a changelog.

Key: the idempotency key (raw UTF-8 bytes, the same bytes as the record key, so a
key lives in the table partition of the source partition). Value: the event time
(epoch ms, ASCII) of the event that was processed.

TTL on event time (``DEDUP_TTL``): a marker older than the TTL *relative to the
incoming event's time* counts as absent, and a periodic sweep deletes markers older
than the partition's event-time watermark minus the TTL, sending a changelog
tombstone for each so they do not come back when the table is recovered.

The pipeline reads and writes this table per batch, with explicit partitions —
Faust's ``table[key] = …`` needs a "current event" and writes its changelog one
record at a time. This adapter uses Faust's per-partition RocksDB handles
(``Store._db_for_partition``, ``_dbs``, ``set_persisted_offset``; faust-streaming
0.15.3, pinned) and produces changelog records itself, awaiting their acks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import rocksdict
from faust.types import TP

from streams.metrics import Metrics
from streams.pipeline import Outgoing, Publisher
from streams.publisher import gather_acks

log = logging.getLogger(__name__)

#: RocksDB key under which Faust keeps a partition's persisted changelog offset.
FAUST_OFFSET_KEY = b"__faust\0offset__"


def define_dedup_table(app: Any, service: str, partitions: int) -> Any:
    """The Faust table of one service's processed keys (raw keys and values)."""
    return app.Table(
        f"{service}-dedup",
        partitions=partitions,
        key_type=bytes,  # bytes → Faust's "raw" serializer for keys and values
        value_type=bytes,
        options={"driver": "rocksdict"},
        help=f"idempotency keys processed by {service} → event time (ms)",
    )


def expired_keys(items: Sequence[tuple[bytes, bytes]], cutoff_ms: int) -> list[bytes]:
    """Keys whose marker (event time, ms) is older than ``cutoff_ms``."""
    out = []
    for key, value in items:
        if key == FAUST_OFFSET_KEY:
            continue
        try:
            marked = int(value)
        except ValueError:
            continue
        if marked < cutoff_ms:
            out.append(key)
    return out


class FaustDedupTable:
    """:class:`streams.pipeline.DedupStore` over a Faust RocksDB table."""

    def __init__(
        self, app: Any, table: Any, publisher: Publisher, metrics: Metrics, ttl_ms: int
    ) -> None:
        self.app = app
        self.table = table
        self.publisher = publisher
        self.metrics = metrics
        self.ttl_ms = ttl_ms
        self.watermarks: dict[int, int] = {}
        # Serialises marking and sweeping: a sweep must not delete a marker that a
        # batch has just rewritten.
        self._lock = asyncio.Lock()

    @property
    def changelog(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def lookup(self, partition: int, keys: Sequence[bytes]) -> Sequence[int | None]:
        values = self._db(partition).get(list(keys))
        return [int(v) if v is not None else None for v in values]

    def observe(self, partition: int, event_time_ms: int) -> None:
        if event_time_ms > self.watermarks.get(partition, 0):
            self.watermarks[partition] = event_time_ms

    async def mark(self, marks: Mapping[int, Sequence[tuple[bytes, int]]]) -> None:
        async with self._lock:
            writes = {p: [(k, str(t).encode()) for k, t in kv] for p, kv in marks.items()}
            await self._write(writes)

    async def _write(self, writes: Mapping[int, Sequence[tuple[bytes, bytes | None]]]) -> None:
        """Changelog first (acks awaited), then the local RocksDB, then the offset."""
        topic = self.changelog
        records = [Outgoing(topic, key, value, (), partition) for partition, kv in writes.items() for key, value in kv]
        where = [r.partition for r in records]
        send_many = getattr(self.publisher, "send_many", None)
        if send_many is not None:
            futures = await send_many(records)
        else:
            futures = [await self.publisher.send(r) for r in records]
        metas = await gather_acks(futures)
        failed = next((m for m in metas if isinstance(m, BaseException)), None)
        if failed is not None:
            raise failed
        store = self.table.data
        for partition, kv in writes.items():
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in kv:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            self._db(partition).write(batch)
        newest: dict[int, int] = {}
        for partition, meta in zip(where, metas):
            newest[partition] = max(newest.get(partition, -1), int(meta.offset))
        for partition, offset in newest.items():
            store.set_persisted_offset(TP(topic, partition), offset)

    def active_partitions(self) -> list[int]:
        topic = self.changelog
        actives = self.app.assignor.assigned_actives()
        return [p for p in list(self.table.data._dbs) if TP(topic, p) in actives]

    async def sweep(self) -> int:
        """Tombstone markers older than each active partition's watermark − TTL."""
        removed = 0
        async with self._lock:
            for partition in self.active_partitions():
                watermark = self.watermarks.get(partition)
                if watermark is None:
                    continue  # no event time seen on this partition since start
                db = self._db(partition)
                keys = expired_keys(list(db.items()), watermark - self.ttl_ms)
                if keys:
                    await self._write({partition: [(k, None) for k in keys]})
                    removed += len(keys)
        if removed:
            self.metrics.dedup_expired.labels(self.table.name).inc(removed)
            log.info("%s: TTL sweep removed %d keys", self.table.name, removed)
        return removed
