"""tables.dedup: expired_keys and FaustDedupTable (mark / lookup / TTL sweep) on real
rocksdict stores in tmp_path, with a fake Faust app, table and publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from faust.types import TP

from streams.metrics import Metrics
from streams.pipeline import Outgoing
from tables.dedup import FAUST_OFFSET_KEY, FaustDedupTable, expired_keys
from tests.unit.fakes import FakePublisher, wait_until

CHANGELOG = "order-streams-notifications-dedup-changelog"
TTL_MS = 1_000_000
WM = 10_000_000  # a partition's event-time watermark
OLD = str(WM - TTL_MS - 1).encode()  # expired relative to WM
YOUNG = str(WM - TTL_MS + 1).encode()


# -- expired_keys ----------------------------------------------------------------------


def test_expired_keys_older_than_cutoff() -> None:
    items = [(b"a", b"100"), (b"b", b"199"), (b"c", b"200"), (b"d", b"300")]
    assert expired_keys(items, 200) == [b"a", b"b"]


def test_expired_keys_ignores_faust_offset_key_and_non_integers() -> None:
    assert FAUST_OFFSET_KEY == b"__faust\x00offset__"
    items = [(FAUST_OFFSET_KEY, b"5"), (b"x", b"not-a-number"), (b"y", b""), (b"z", b"1.5"), (b"k", b"7")]
    assert expired_keys(items, 1_000) == [b"k"]


def test_expired_keys_nothing_expired() -> None:
    assert expired_keys([(b"a", b"500")], 100) == []
    assert expired_keys([], 100) == []


# -- fakes of what FaustDedupTable uses -------------------------------------------------


class FakeChangelogTopic:
    def get_topic_name(self) -> str:
        return CHANGELOG


class FakeStore:
    """Faust's RocksDB store, as FaustDedupTable uses it: _dbs, _db_for_partition, set_persisted_offset."""

    def __init__(self, root: Path, partitions: list[int]) -> None:
        self._dbs: dict[int, rocksdict.Rdict] = {
            p: rocksdict.Rdict(str(root / f"p{p}"), rocksdict.Options(raw_mode=True)) for p in partitions
        }
        self.persisted: list[tuple[TP, int]] = []

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        return self._dbs[partition]

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted.append((tp, offset))
        self._dbs[tp.partition].put(FAUST_OFFSET_KEY, str(offset).encode())

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()


class FakeTable:
    name = "notifications-dedup"

    def __init__(self, store: FakeStore) -> None:
        self.data = store
        self.changelog_topic = FakeChangelogTopic()


class FakeAssignor:
    def __init__(self, actives: set[TP]) -> None:
        self.actives = actives

    def assigned_actives(self) -> set[TP]:
        return self.actives


class FakeApp:
    def __init__(self, active_partitions: list[int]) -> None:
        self.assignor = FakeAssignor({TP(CHANGELOG, p) for p in active_partitions})


class Setup:
    def __init__(self, root: Path, partitions: list[int], active: list[int], *, auto_ack: bool = True) -> None:
        self.store = FakeStore(root, partitions)
        self.table = FakeTable(self.store)
        self.app = FakeApp(active)
        self.publisher = FakePublisher(auto_ack=auto_ack)
        self.metrics = Metrics()
        self.dedup = FaustDedupTable(self.app, self.table, self.publisher, self.metrics, TTL_MS)

    def db(self, p: int) -> rocksdict.Rdict:
        return self.store._dbs[p]

    def put(self, p: int, key: bytes, value: bytes) -> None:
        self.db(p).put(key, value)

    def has(self, p: int, key: bytes) -> bool:
        return self.db(p).get(key) is not None

    def expired_metric(self) -> float:
        v = self.metrics.registry.get_sample_value("dedup_keys_expired_total", {"table": FakeTable.name})
        return v or 0.0


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[Setup] = []

    def factory(partitions: list[int], active: list[int], **kw: Any) -> Setup:
        s = Setup(tmp_path / f"s{len(made)}", partitions, active, **kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.store.close()


# -- sweep -----------------------------------------------------------------------------


async def test_sweep_tombstones_expired_keys_of_active_partitions(make: Any) -> None:
    s = make([0, 1, 2], active=[0, 1])
    for p in (0, 1, 2):
        s.put(p, b"old-%d" % p, OLD)
        s.put(p, b"young-%d" % p, YOUNG)
    s.put(0, FAUST_OFFSET_KEY, b"3")  # numerically ancient: must survive
    s.put(0, b"junk", b"not-a-time")
    for p in (0, 1, 2):
        s.dedup.observe(p, WM)

    removed = await asyncio.wait_for(s.dedup.sweep(), 5)

    assert removed == 2
    assert s.publisher.sent == [Outgoing(CHANGELOG, b"old-0", None, (), 0), Outgoing(CHANGELOG, b"old-1", None, (), 1)]
    assert not s.has(0, b"old-0") and not s.has(1, b"old-1")
    assert s.has(0, b"young-0") and s.has(1, b"young-1")
    assert s.has(0, FAUST_OFFSET_KEY) and s.has(0, b"junk")
    # partition 2 is not active here (standby or revoked): untouched, nothing sent
    assert s.has(2, b"old-2")
    assert s.expired_metric() == 2
    assert {tp for tp, _ in s.store.persisted} == {TP(CHANGELOG, 0), TP(CHANGELOG, 1)}


async def test_sweep_needs_an_observed_watermark(make: Any) -> None:
    s = make([0, 1], active=[0, 1])
    s.put(0, b"old", b"1")
    s.put(1, b"old", b"1")
    assert await s.dedup.sweep() == 0
    assert s.publisher.sent == []
    assert s.has(0, b"old") and s.has(1, b"old")

    s.dedup.observe(1, WM)  # only partition 1 has seen an event time
    assert await s.dedup.sweep() == 1
    assert s.publisher.sent == [Outgoing(CHANGELOG, b"old", None, (), 1)]
    assert s.has(0, b"old") and not s.has(1, b"old")


async def test_sweep_cutoff_is_watermark_minus_ttl(make: Any) -> None:
    s = make([0], active=[0])
    s.put(0, b"k", str(WM - TTL_MS).encode())
    s.dedup.observe(0, WM)
    assert await s.dedup.sweep() == 0  # exactly at the cutoff: kept
    s.dedup.observe(0, WM + 1)
    assert await s.dedup.sweep() == 1
    assert not s.has(0, b"k")


async def test_watermark_only_moves_forward(make: Any) -> None:
    s = make([0], active=[0])
    s.dedup.observe(0, WM)
    s.dedup.observe(0, WM - 5_000_000)
    assert s.dedup.watermarks == {0: WM}


async def test_sweep_sends_tombstone_before_deleting_locally(make: Any) -> None:
    s = make([0], active=[0], auto_ack=False)
    s.put(0, b"old", OLD)
    s.dedup.observe(0, WM)
    task = asyncio.create_task(s.dedup.sweep())
    await wait_until(lambda: len(s.publisher.sent) == 1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert s.has(0, b"old"), "deleted locally before the tombstone was acknowledged"
    s.publisher.release()
    assert await asyncio.wait_for(task, 5) == 1
    assert not s.has(0, b"old")


async def test_sweep_with_nothing_expired_sends_nothing(make: Any) -> None:
    s = make([0], active=[0])
    s.put(0, b"young", YOUNG)
    s.dedup.observe(0, WM)
    assert await s.dedup.sweep() == 0
    assert s.publisher.sent == []
    assert s.expired_metric() == 0


# -- mark / lookup ---------------------------------------------------------------------


async def test_mark_writes_changelog_first_then_local(make: Any) -> None:
    s = make([0, 1], active=[0, 1], auto_ack=False)
    task = asyncio.create_task(s.dedup.mark({0: [(b"a", 111), (b"b", 222)], 1: [(b"c", 333)]}))
    await wait_until(lambda: len(s.publisher.sent) == 3)
    assert s.publisher.sent == [
        Outgoing(CHANGELOG, b"a", b"111", (), 0),
        Outgoing(CHANGELOG, b"b", b"222", (), 0),
        Outgoing(CHANGELOG, b"c", b"333", (), 1),
    ]
    s.publisher.release(2)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    assert not any(s.has(p, k) for p, k in [(0, b"a"), (0, b"b"), (1, b"c")]), "local write before every ack"
    s.publisher.release()
    await asyncio.wait_for(task, 5)
    assert s.db(0).get(b"a") == b"111" and s.db(0).get(b"b") == b"222" and s.db(1).get(b"c") == b"333"
    # the persisted changelog offset is the newest acked offset per partition
    assert sorted(s.store.persisted) == [(TP(CHANGELOG, 0), 1), (TP(CHANGELOG, 1), 0)]


async def test_lookup_after_mark(make: Any) -> None:
    s = make([0, 1], active=[0, 1])
    await s.dedup.mark({0: [(b"a", 111)], 1: [(b"b", 222)]})
    assert list(s.dedup.lookup(0, [b"a", b"b", b"zz"])) == [111, None, None]
    assert list(s.dedup.lookup(1, [b"b"])) == [222]


async def test_sweep_waits_for_a_running_mark(make: Any) -> None:
    """A sweep must not delete a marker a batch is rewriting (they share a lock)."""
    s = make([0], active=[0], auto_ack=False)
    s.put(0, b"k", OLD)
    s.dedup.observe(0, WM)
    marking = asyncio.create_task(s.dedup.mark({0: [(b"k", WM)]}))
    await wait_until(lambda: len(s.publisher.sent) == 1)
    sweeping = asyncio.create_task(s.dedup.sweep())
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(s.publisher.sent) == 1  # the sweep has not read the store yet
    s.publisher.release()
    await asyncio.wait_for(marking, 5)
    assert await asyncio.wait_for(sweeping, 5) == 0
    assert s.db(0).get(b"k") == str(WM).encode()
