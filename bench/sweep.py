"""Sweep cost: the dedup TTL sweep over 100,000 and over 1,000,000 live keys, with
the same number of expired keys (issue 13: "within 2 × of each other").

In-process: the real :class:`~streams.engine.pipeline.Pipeline` with the real
:class:`~agents.notifications.NotificationsService`, over :class:`RocksStore` — a
RocksDB-backed :class:`~streams.engine.ports.StateStore` with the read / scan /
write semantics of :class:`streams.faust.stores.TableStore` minus the changelog. Markers
and their time-index entries are written the way the pipeline writes them
(``tx.set(key, str(time_ms))`` and ``tx.schedule(time_ms, key, durable=False)``
through the same :class:`~streams.engine.ports.Transaction`), the memtables are
flushed to SST files, then ``pipeline.maintain(partitions)`` is timed.

``python -m bench.sweep [--live 100000 1000000] [--expired 10000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rocksdict

from agents.notifications import NotificationsService
from agents.notifier import LogNotifier
from streams.engine.pipeline import MAINTENANCE_LIMIT, Pipeline
from streams.engine.ports import BatchState, Publisher, StateStore, Writes
from streams.engine.records import Ack, Outgoing
from streams.engine.routing import RetryPolicy
from streams.faust.stores import RdictStore

TABLE = NotificationsService.dedup_table
PARTITIONS = (0, 1, 2, 3)
NOW_MS = 1_800_000_000_000
TTL_MS = 86_400_000


class RocksStore(RdictStore):
    """Tables of bytes in one rocksdict per (table, partition), read and scanned as
    :class:`~streams.faust.stores.TableStore` reads them; one write batch per partition
    (durable and local writes alike); no changelog."""

    def __init__(self, root: Path, *, max_value_bytes: int = 256 * 1024) -> None:
        self.root = root
        self.max_value_bytes = max_value_bytes
        self._dbs: dict[tuple[str, int], Any] = {}

    def db(self, table: str, partition: int) -> Any:
        found = self._dbs.get((table, partition))
        if found is None:
            path = self.root / f"{table}-{partition}"
            path.mkdir(parents=True, exist_ok=True)
            found = self._dbs[(table, partition)] = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        return found

    async def write(self, writes: Sequence[Writes]) -> None:
        for w in writes:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for part in (w.durable, w.local):
                for key, value in part.items():
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
            self.db(w.table, w.partition).write(batch)

    def flush(self) -> None:
        for db in self._dbs.values():
            db.flush()

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()


class NoPublisher(Publisher):
    async def send_many(self, messages: Sequence[Outgoing]) -> list[Ack]:
        raise AssertionError(f"the sweep sent {len(messages)} records")


class Tally:
    """The pipeline's Counts port, kept in a Counter."""

    def __init__(self) -> None:
        self.c: Counter[str] = Counter()

    def processed(self, service: str, type_name: str, status: str, n: int) -> None:
        self.c[f"processed:{status}"] += n

    def retried(self, service: str, tier: int) -> None:
        self.c["retried"] += 1

    def dead_lettered(self, service: str, reason: str) -> None:
        self.c["dead_lettered"] += 1

    def batch(self, service: str, size: int, seconds: float, latencies: Sequence[float]) -> None:
        pass

    def send_retried(self, service: str, n: int) -> None:
        self.c["send_retried"] += n

    def expired(self, table: str, n: int) -> None:
        self.c["expired"] += n


async def fill(store: StateStore, keys: Sequence[tuple[int, bytes, int]], chunk: int = 20_000) -> None:
    """(partition, key, time_ms) markers and index entries, as ``Pipeline._mark`` writes them."""
    for i in range(0, len(keys), chunk):
        state = BatchState(store)
        for partition, key, at in keys[i:i + chunk]:
            tx = state.tx(TABLE, partition)
            tx.set(key, str(at).encode())
            tx.schedule(at, key, durable=False)
        await state.flush()


async def sweep_cost(live: int, expired: int, rounds: int, root: Path, seed: int = 3) -> dict[str, Any]:
    rng = random.Random(seed)
    store = RocksStore(root)
    pipeline = Pipeline(NotificationsService(LogNotifier()), publisher=NoPublisher(), store=store, counts=Tally(),
                        policy=RetryPolicy((1.0,)), allowed=lambda _t: True, ttl_ms=TTL_MS,
                        clock=lambda: NOW_MS / 1000)
    try:
        t0 = time.perf_counter()
        await fill(store, [(i % 4, f"live-{i}".encode(), NOW_MS - rng.randrange(TTL_MS - 60_000))
                           for i in range(live)])
        fill_s = time.perf_counter() - t0
        times, removed = [], []
        for r in range(rounds):
            # new expired keys each round, older than the cutoff (earlier rounds' index
            # tombstones stay in the range the sweep scans, as in a running worker)
            await fill(store, [(i % 4, f"old-{r}-{i}".encode(), NOW_MS - TTL_MS - 1_000 - rng.randrange(3_600_000))
                               for i in range(expired)])
            store.flush()
            for p in PARTITIONS:
                pipeline.watermarks[p] = NOW_MS
            counts: Tally = pipeline.counts  # type: ignore[assignment]
            before = counts.c["expired"]
            t = time.perf_counter()
            ticks = 0
            while True:  # as the worker's maintenance ticks would: until nothing is due
                ticks += 1
                await pipeline.maintain(PARTITIONS)
                if counts.c["expired"] - before >= expired or ticks > expired // MAINTENANCE_LIMIT + 4:
                    break
            times.append(time.perf_counter() - t)
            removed.append(counts.c["expired"] - before)
        left = sum(1 for p in PARTITIONS for k in store.db(TABLE, p).keys() if k.startswith(b"old-"))
        return {"live_keys": live, "expired_keys": expired, "rounds": rounds, "fill_seconds": round(fill_s, 2),
                "seconds": times, "median_s": statistics.median(times), "removed": removed,
                "expired_left": left}
    finally:
        store.close()


async def run(live_sizes: Sequence[int], expired: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": []}
    for live in live_sizes:
        root = Path(tempfile.mkdtemp(prefix=f"bench-sweep-{live}-"))
        try:
            out["sizes"].append(await sweep_cost(live, expired, rounds, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    small, big = out["sizes"][0], out["sizes"][-1]
    out["ratio"] = big["median_s"] / small["median_s"] if small["median_s"] else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sweep")
    p.add_argument("--live", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--expired", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.live, a.expired, a.rounds)), indent=1))


if __name__ == "__main__":
    main()
