"""The batch fast path (streams/fastpath.py, issue 8): records really take it, and
Faust really commits their offsets — the guard against a Faust upgrade that renames
one of the private names it relies on (offsets would silently stop committing)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.application import APP_ID
from streams.events import NotificationSent, OrderCreated, OrderPaid
from tests.support.events import created, paid
from tests.support.kafka import produce, read_topic
from tests.support.worker import metric_value

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


async def committed_total(bootstrap: str, topic: str, partitions: int = 4) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=APP_ID, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum([await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)])
    finally:
        await consumer.stop()


async def wait_committed(bootstrap: str, topic: str, expected: int) -> int:
    total = 0
    for _ in range(60):
        total = await committed_total(bootstrap, topic)
        if total >= expected:
            break
        await asyncio.sleep(0.5)
    return total


@pytest.mark.parametrize("services,shared", [("notifications", False), ("notifications,order-state", True)])
async def test_fast_path_processes_and_commits_and_a_restart_redelivers_nothing(broker, worker_factory, services, shared):
    worker = worker_factory(services=services)
    await asyncio.to_thread(worker.start().wait_ready)
    ids = [f"o-{i}" for i in range(3000)]
    if shared:
        await produce(broker.bootstrap, OrderCreated.topic(), [created(i) for i in ids])
    await produce(broker.bootstrap, PAID, [paid(i) for i in ids] + [paid(i) for i in ids[:500]])
    sent = await read_topic(broker.bootstrap, SENT, expect=3000, idle=1)
    assert sorted(Counter(r.key for r in sent).values()) == [1] * 3000
    text = await asyncio.to_thread(worker.metrics)
    assert metric_value(text, "fast_path_records_total", topic=PAID) == 3500
    assert metric_value(text, "event_processed_total", service="notifications", status="duplicate") == 500
    # Faust committed every offset the fast path processed (and, when shared, that
    # order-state acknowledged too).
    assert await wait_committed(broker.bootstrap, PAID, 3500) == 3500
    if shared:  # let order-state finish its other topics too before the restart
        assert await wait_committed(broker.bootstrap, OrderCreated.topic(), 3000) == 3000
        assert await wait_committed(broker.bootstrap, SENT, 3000) == 3000

    await asyncio.to_thread(worker.stop)
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, [paid("o-new")])
    await read_topic(broker.bootstrap, SENT, expect=3001, idle=1)
    text = await asyncio.to_thread(worker.metrics)
    assert metric_value(text, "fast_path_records_total", topic=PAID) == 1  # nothing redelivered
    if shared:
        # only o-new's OrderPaid (parked: no OrderCreated) and its NotificationSent
        assert metric_value(text, "event_processed_total", service="order-state") == 2


async def test_fast_path_off_uses_faust_streams_with_the_same_outcome(broker, worker_factory):
    worker = worker_factory(services="notifications", fast_path="false")
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(500)] + [paid("o-1")])
    sent = await read_topic(broker.bootstrap, SENT, expect=500, idle=1)
    assert len(sent) == 500
    text = await asyncio.to_thread(worker.metrics)
    assert metric_value(text, "fast_path_records_total") == 0
    assert metric_value(text, "event_processed_total", service="notifications", status="duplicate") == 1
    assert await wait_committed(broker.bootstrap, PAID, 501) == 501
