"""Table recovery at the speed of the changelog, with progress a person can watch.

Faust keeps the group, the assignment and deciding what needs recovery; it asks the
consumer for the changelog partitions' end offsets first (``_build_highwaters``).
:class:`BulkLoader` answers that call by loading, before Faust replays anything,
each partition from its persisted offset to that end:

1. large fetches of a plain aiokafka consumer (no group, no per-record events);
2. per fetch and partition, one RocksDB write batch: puts, tombstone deletes, the
   engine's derived index entries (each table's :class:`~streams.engine.ports.Indexer`) and
   the persisted offset of the last record — atomic, so a crash mid-way resumes
   from exactly there;
3. Faust's recovery offsets moved to the end, so it has nothing left to replay.

Measured before: Faust's per-record recovery read the dedup changelog at 13.7k
records/s against a raw consume's 691k (0.02 ×); 400,000 keys took a wiped worker
80 s more than a fresh one, with ``/health`` saying only 503.

Rules next to it:

- **Local state its changelog cannot back** — a partition whose persisted offset is
  at or past the changelog's end (a recreated cluster, a broker that lost its data,
  the embedded broker restarted under an old data dir) — is wiped and rebuilt from
  the changelog, with one line in the log saying so. Faust would stop with
  ``ConsistencyError`` and a traceback instead.
- **A time budget**: Faust waits ``broker_request_timeout`` for the end offsets and
  gives up recovery entirely past it, so loading stops after a share of that; what
  is left Faust replays itself (slower, still correct: the store's
  ``apply_changelog_batch`` writes the same index entries).
- **Progress**: ``table_recovery_records_remaining{table,partition}``, a log line
  every few seconds per table (done, remaining, records/s, ETA) and ``/health``'s
  503 body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.engine.ports import INDEX_PREFIX, Indexer
from streams.faust.compat import changelog_topic, offset_key, partition_db

log = logging.getLogger(__name__)

WIPE_END = b"\xff" * 256
LOG_EVERY = 5.0


@dataclass
class Progress:
    """Records still to load, per (table, partition); read by /metrics and /health."""

    remaining: dict[tuple[str, int], int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, int, int]]:
        return [(t, p, n) for (t, p), n in sorted(self.remaining.items())]

    def summary(self) -> dict[str, Any]:
        per_table: dict[str, int] = {}
        for (table, _), n in self.remaining.items():
            per_table[table] = per_table.get(table, 0) + n
        return {"recovering": per_table, "records_remaining": sum(per_table.values())}


class BulkLoader:
    def __init__(self, tables: Mapping[str, Any], *, bootstrap: str, client_kwargs: Mapping[str, Any],
                 indexers: Mapping[str, Indexer], progress: Progress, max_fetch_bytes: int,
                 budget: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.by_changelog = {changelog_topic(t): (name, t) for name, t in tables.items()}
        self.bootstrap = bootstrap
        self.client_kwargs = dict(client_kwargs)
        self.indexers = indexers
        self.progress = progress
        self.max_fetch_bytes = max_fetch_bytes
        self.budget = budget
        self.clock = clock
        self.loaded_total = 0

    @property
    def changelogs(self) -> set[str]:
        return set(self.by_changelog)

    async def load(self, ends: Mapping[Any, int]) -> dict[Any, int]:
        """Load each changelog partition of ``ends`` (partition → end offset) up to its
        end; returns partition → offset of the last record now in the store."""
        todo: dict[Any, tuple[int, int]] = {}
        done: dict[Any, int] = {}
        for tp, end in ends.items():
            name, table = self.by_changelog[tp.topic]
            persisted = table.data.persisted_offset(tp)
            if persisted is not None and persisted >= end:
                log.warning("%s[%d]: local state is at changelog offset %d but the changelog ends at %d "
                            "(a new or reset cluster?): rebuilding it from the changelog",
                            name, tp.partition, persisted, end - 1)
                self._wipe(table, tp.partition)
                persisted = None
            start = persisted + 1 if persisted is not None else 0
            if start < end:
                todo[tp] = (start, end)
            else:
                done[tp] = end - 1
        if not todo:
            return done
        done.update(await self._load(todo))
        return done

    async def _load(self, todo: dict[Any, tuple[int, int]]) -> dict[Any, int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.max_fetch_bytes, fetch_max_bytes=self.max_fetch_bytes * 4,
            fetch_max_wait_ms=20, **self.client_kwargs,
        )
        await consumer.start()
        reached: dict[Any, int] = {}
        started = self.clock()
        try:
            tps = {TopicPartition(tp.topic, tp.partition): tp for tp in todo}
            consumer.assign(list(tps))
            earliest = await consumer.beginning_offsets(list(tps))
            for atp, tp in tps.items():
                start = max(todo[tp][0], int(earliest.get(atp) or 0))
                todo[tp] = (start, todo[tp][1])
                consumer.seek(atp, start)
                self._remaining(tp, todo[tp][1] - start)
            pending = {atp for atp, tp in tps.items() if todo[tp][0] < todo[tp][1]}
            last_log = started
            loaded_at_start = self.loaded_total
            while pending:
                if self.clock() - started > self.budget:
                    log.warning("bulk recovery stopped after %.0fs with %d records left; Faust replays the rest",
                                self.clock() - started, sum(self.progress.remaining.values()))
                    break
                batch = await consumer.getmany(*pending, timeout_ms=200, max_records=100_000)
                for atp, records in batch.items():
                    tp = tps[atp]
                    end = todo[tp][1]
                    if records and records[-1].offset >= end:
                        records = [r for r in records if r.offset < end]
                    last = self._apply(tp, records)
                    if last is not None:
                        reached[tp] = last
                        self._remaining(tp, end - 1 - last)
                    if (last is not None and last >= end - 1) or await consumer.position(atp) >= end:
                        pending.discard(atp)
                        self._remaining(tp, 0)
                        reached[tp] = end - 1  # what follows the last record up to the end: markers
                # A partition whose last offsets are transaction markers (exactly-once: a
                # commit marker follows every transaction) returns no records for them, only
                # a position past them: done at its end (it once waited out the budget).
                for atp in list(pending):
                    tp = tps[atp]
                    if atp not in batch and await consumer.position(atp) >= todo[tp][1]:
                        pending.discard(atp)
                        self._remaining(tp, 0)
                        reached[tp] = todo[tp][1] - 1
                now = self.clock()
                if now - last_log >= LOG_EVERY:
                    last_log = now
                    self._log_progress(now - started, self.loaded_total - loaded_at_start)
            seconds = self.clock() - started
            count = self.loaded_total - loaded_at_start
            log.info("bulk recovery: %d changelog records into %d table partitions in %.1fs (%.0f records/s)",
                     count, len(todo), seconds, count / seconds if seconds else 0.0)
        finally:
            await consumer.stop()
            for tp in todo:
                self.progress.remaining.pop(self._where(tp), None)
        return reached

    def _apply(self, tp: Any, records: list[Any]) -> int | None:
        """One write batch: the records, their index entries, the persisted offset."""
        if not records:
            return None
        name, table = self.by_changelog[tp.topic]
        indexer = self.indexers.get(name)
        batch = rocksdict.WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete  # the per-record loop is the loader's cost
        unscheduled = []
        for r in records:
            value = r.value
            if value is None:
                delete(r.key)
                if r.key[:2] == INDEX_PREFIX:
                    unscheduled.append(r.key)
            else:
                put(r.key, value)
        if indexer is not None:
            for index in indexer.of_records(records):  # a whole fetch at once where it can
                put(index, b"1")
            # An index entry's tombstone always follows the value it was derived from:
            # one derived above from an older value of this fetch stays deleted (a
            # parked event applied, then unscheduled, came back after a wiped-dir recovery).
            for key in unscheduled:
                delete(key)
        last = records[-1].offset
        batch.put(offset_key(table), str(last).encode())
        partition_db(table, tp.partition).write(batch)
        self.loaded_total += len(records)
        return int(last)

    def _wipe(self, table: Any, partition: int) -> None:
        db = partition_db(table, partition)
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.delete_range(b"", WIPE_END)
        db.write(batch)

    def _where(self, tp: Any) -> tuple[str, int]:
        return self.by_changelog[tp.topic][0], tp.partition

    def _remaining(self, tp: Any, n: int) -> None:
        self.progress.remaining[self._where(tp)] = max(0, n)

    def _log_progress(self, seconds: float, count: int) -> None:
        rate = count / seconds if seconds else 0.0
        for table, left in self.progress.summary()["recovering"].items():
            eta = f"{left / rate:.0f}s" if rate else "?"
            log.info("recovering %s: %d records loaded, %d remaining, %.0f records/s, ETA %s",
                     table, count, left, rate, eta)
