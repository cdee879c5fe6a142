"""SIGKILL the worker mid-run: 0 lost, duplicates counted (issue 2)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderPaid
from tests.support.events import paid
from tests.support.kafka import produce, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


async def test_issue2_worker_sigkilled_3_times_during_10000_events_loses_nothing(broker, worker_factory):
    rng = random.Random(2)
    ids = [f"o-{i}" for i in range(10_000)]
    worker = worker_factory("w1")
    await asyncio.to_thread(worker.start().wait_ready)

    async def feed() -> None:
        for start in range(0, len(ids), 250):
            await produce(broker.bootstrap, PAID, [paid(i) for i in ids[start:start + 250]])
            await asyncio.sleep(0.3)

    feeder = asyncio.create_task(feed())
    for _ in range(3):
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        worker.kill()
        await asyncio.to_thread(worker.start().wait_ready)
    await feeder

    wanted = {i.encode() for i in ids}
    sent = await read_topic(
        broker.bootstrap, SENT, until=lambda r: wanted <= {x.key for x in r}, idle=3, timeout=180
    )
    per_order = Counter(r.key for r in sent)
    lost = wanted - set(per_order)
    duplicates = sum(per_order.values()) - len(per_order)
    print(f"\nSIGKILL x3 over 10,000 OrderPaid: produced={len(ids)} notified={len(per_order)} "
          f"lost={len(lost)} duplicate NotificationSent={duplicates} worker starts={worker.starts}")
    assert worker.starts == 4
    assert not lost, f"lost {len(lost)} orders, e.g. {sorted(lost)[:5]}"
