"""Table recovery from the changelog, on the embedded broker (issue 2)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderPaid
from tests.support.events import paid
from tests.support.kafka import produce, read_topic, wait_consumed
from tests.support.worker import metric_value

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


async def test_wiped_data_dir_recovers_dedup_table_and_replay_sends_nothing_new(broker, worker_factory):
    ids = [f"o-{i}" for i in range(1800)]
    worker = worker_factory("w1")
    await asyncio.to_thread(worker.start().wait_ready)
    # Several produce calls → several broker batches per partition: the shape that
    # makes the embedded broker's ListOffsets answer short (see streams/offsets.py).
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
    """Guards the embedded broker's short ListOffsets (streams/offsets.py): with it,
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
    recovery the key is still gone, so the same event is processed once more. Record
    time is the broker timestamp (an hour apart here: past the 60 s TTL)."""
    worker = worker_factory("w1", dedup_ttl="60")
    await asyncio.to_thread(worker.start().wait_ready)
    now_ms = int(time.time() * 1000)
    old = [paid(f"old-{i}") for i in range(20)]
    await produce(broker.bootstrap, PAID, old, timestamp_ms=now_ms - 3_600_000)
    await read_topic(broker.bootstrap, SENT, expect=20)
    # Newer records on every partition advance the watermarks.
    await produce(broker.bootstrap, PAID, [paid(f"new-{i}") for i in range(40)], timestamp_ms=now_ms)
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
    await produce(broker.bootstrap, PAID, old, timestamp_ms=now_ms - 3_600_000)
    await produce(broker.bootstrap, PAID, [paid("new-0")], timestamp_ms=now_ms)
    await wait_consumed(broker.bootstrap, [PAID])
    sent = Counter(r.key for r in await read_topic(broker.bootstrap, SENT, expect=80))
    assert all(sent[f"old-{i}".encode()] == 2 for i in range(20)), "expired keys came back"
    assert sent[b"new-0"] == 1
