"""Table recovery from the changelog, on the embedded broker (issue 2)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderPaid
from harness.events import paid
from harness.kafka import produce, read_topic, reset_broker, wait_consumed
from harness.worker import metric_value

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


async def test_wiped_data_dir_recovers_dedup_table_and_replay_sends_nothing_new(broker, worker_factory):
    ids = [f"o-{i}" for i in range(1800)]
    worker = worker_factory("w1")
    await asyncio.to_thread(worker.start().wait_ready)
    # Several produce calls → several broker batches per partition: the shape that
    # makes the embedded broker's ListOffsets answer short (see streams/faust/compat.py, fetch_high_watermarks).
    for chunk in range(0, len(ids), 150):
        await produce(broker.bootstrap, PAID, [paid(i) for i in ids[chunk:chunk + 150]])
    await wait_consumed(broker.bootstrap, [PAID])
    first = await read_topic(broker.bootstrap, SENT, expect=len(ids))
    assert len(first) == len(ids)

    await asyncio.to_thread(worker.stop)
    shutil.rmtree(worker.data_dir)
    await asyncio.to_thread(worker.start().wait_ready)

    # Replay every event: a complete recovery knows them all.
    for chunk in range(0, len(ids), 150):
        await produce(broker.bootstrap, PAID, [paid(i) for i in ids[chunk:chunk + 150]])

    async def duplicates_counted() -> float:
        text = await asyncio.to_thread(worker.metrics)
        return metric_value(text, "event_processed_total", service="notifications", status="duplicate")

    await wait_consumed(broker.bootstrap, [PAID])
    after = await read_topic(broker.bootstrap, SENT)
    again = Counter(r.key for r in after)
    assert [k for k, n in again.items() if n > 1] == []
    assert len(after) == len(ids)
    assert await duplicates_counted() == len(ids)


async def test_restart_on_old_data_dir_does_not_trip_consistency_check(broker, worker_factory):
    """Guards the embedded broker's short ListOffsets (streams/faust/compat.py): with it,
    the table's persisted changelog offset is past the reported end offset and Faust
    stops with ``ConsistencyError (persisted > highwater)``."""
    worker = worker_factory("w1")
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(400)])
    await read_topic(broker.bootstrap, SENT, expect=400)
    await asyncio.to_thread(worker.stop)

    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(300, 500)])
    await wait_consumed(broker.bootstrap, [PAID])
    sent = await read_topic(broker.bootstrap, SENT, expect=500)
    assert sorted(Counter(r.key for r in sent).values()) == [1] * 500
    assert "ConsistencyError" not in worker.tail(400)


async def test_ttl_sweep_tombstones_do_not_come_back_after_recovery(broker, worker_factory):
    """An expired key is deleted with a changelog tombstone: after a wiped-dir
    recovery the key is still gone, so the same event is processed once more. A marker
    is as old as the moment it was written; it expires once records stamped more than
    DEDUP_TTL (20 s) later arrived (here: stamped 45 s ahead, within the 60 s the
    worker believes)."""
    worker = worker_factory("w1", dedup_ttl="20")
    await asyncio.to_thread(worker.start().wait_ready)
    now_ms = int(time.time() * 1000)
    old = [paid(f"old-{i}") for i in range(20)]
    await produce(broker.bootstrap, PAID, old, timestamp_ms=now_ms)
    await read_topic(broker.bootstrap, SENT, expect=20)
    later_ms = int(time.time() * 1000) + 45_000
    # Newer records on every partition advance the watermarks.
    await produce(broker.bootstrap, PAID, [paid(f"new-{i}") for i in range(40)], timestamp_ms=later_ms)
    await read_topic(broker.bootstrap, SENT, expect=60)

    async def expired() -> float:
        return metric_value(await asyncio.to_thread(worker.metrics), "dedup_keys_expired_total")

    for _ in range(60):
        if await expired() >= 20:
            break
        await asyncio.sleep(0.5)
    assert await expired() == 20  # the 40 new keys are within the TTL

    await asyncio.to_thread(worker.stop)
    shutil.rmtree(worker.data_dir)
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, old, timestamp_ms=now_ms)
    await produce(broker.bootstrap, PAID, [paid("new-0")], timestamp_ms=later_ms)
    await wait_consumed(broker.bootstrap, [PAID])
    sent = Counter(r.key for r in await read_topic(broker.bootstrap, SENT, expect=80))
    assert all(sent[f"old-{i}".encode()] == 2 for i in range(20)), "expired keys came back"
    assert sent[b"new-0"] == 1


def dump_tables(data_dir) -> dict[str, dict[bytes, bytes]]:
    """Every key of every table partition in a stopped worker's data dir (the persisted
    offset key aside), by table-partition directory name."""
    import rocksdict

    out: dict[str, dict[bytes, bytes]] = {}
    for path in sorted(data_dir.rglob("*.db")):
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            out[path.name] = {k: v for k, v in db.items() if not k.startswith(b"__faust")}
        finally:
            db.close()
    return out


async def test_recovered_tables_equal_the_originals_key_by_key(broker, worker_factory):
    """Dedup markers, order states (parked events, their local time index) and
    inventory stock and decisions, after a wiped-dir recovery: the same keys and values
    as before the wipe — tombstones applied, and records written after a restart on
    the old data dir included."""
    from harness.events import created

    worker = worker_factory("w1", park_timeout="3600")
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, "inventory.requests",
                  [(b"s-1", b'{"kind":"set","sku":"s-1","qty":150}')])
    ids = [f"o-{i}" for i in range(300)]
    await produce(broker.bootstrap, "events.order.created.v1", [created(i) for i in ids[:200]])
    await produce(broker.bootstrap, PAID, [paid(i) for i in ids])  # 100 parked: never created
    stages = [PAID, "events.order.created.v1", SENT, "inventory.requests", "inventory.answers"]
    await wait_consumed(broker.bootstrap, stages)
    await asyncio.to_thread(worker.stop)
    # a restart on the old data dir, then more records (some expire: a 1 s park timeout)
    worker.env["PARK_TIMEOUT"] = "1"
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, "events.order.created.v1", [created(i) for i in ids[200:250]])
    await wait_consumed(broker.bootstrap, stages)
    await wait_consumed(broker.bootstrap, stages)

    def timeouts_done() -> bool:
        text = worker.metrics()
        return metric_value(text, "dead_letter_total", service="order-state", reason="out_of_order_timeout") >= 100

    deadline = time.monotonic() + 60
    while not await asyncio.to_thread(timeouts_done):
        assert time.monotonic() < deadline, "parked events never timed out"
        await asyncio.sleep(0.2)
    await asyncio.to_thread(worker.stop)
    before = dump_tables(worker.data_dir)
    assert sum(len(kv) for kv in before.values()) > 900

    shutil.rmtree(worker.data_dir)
    await asyncio.to_thread(worker.start().wait_ready)
    await asyncio.to_thread(worker.stop)
    after = dump_tables(worker.data_dir)
    assert set(after) == set(before)
    for name in before:
        missing = set(before[name]) - set(after[name])
        extra = set(after[name]) - set(before[name])
        changed = [k for k in before[name] if k in after[name] and before[name][k] != after[name][k]]
        assert not (missing or extra or changed), (name, sorted(missing)[:3], sorted(extra)[:3], changed[:3])


async def test_local_state_its_changelog_cannot_back_is_rebuilt_with_one_line(broker, worker_factory):
    """Regression: a second `make run` (a new embedded broker, the old ./data) crashed
    with Faust's ConsistencyError (1 > -1) and a traceback."""
    from streams.broker import EmbeddedBroker, KafkaBroker

    worker = worker_factory("w1")
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(50)])
    await wait_consumed(broker.bootstrap, [PAID])
    await asyncio.to_thread(worker.stop)
    if isinstance(broker, KafkaBroker):  # every topic and group deleted: empty changelogs, as a new cluster's
        await reset_broker(broker.bootstrap)
    with (contextlib.nullcontext(broker) if isinstance(broker, KafkaBroker)
          else EmbeddedBroker()) as fresh:  # another cluster: its changelogs are empty
        worker.broker_url = fresh.url
        await asyncio.to_thread(worker.start().wait_ready)
        await produce(fresh.bootstrap, PAID, [paid("o-1")])
        await wait_consumed(fresh.bootstrap, [PAID])
        sent = await read_topic(fresh.bootstrap, SENT, expect=1)
        assert [r.key for r in sent] == [b"o-1"]  # not a duplicate of the old cluster's o-1
        log = worker.log_path.read_text(errors="replace").split("===== start 2")[-1]
        assert "ConsistencyError" not in log and "Traceback" not in log
        assert "rebuilding it from the changelog" in log
        await asyncio.to_thread(worker.stop)
