"""The notifications service end to end: real worker process, on the embedded Tansu broker.

Part of Tansu's own job (the ``tansu`` fixture, not ``broker``): while Tansu is a supported
fallback (``make run`` without Java), one dedup end to end test shows the worker still
works on it. The same test on Apache Kafka: tests/integration/test_kafka_worker.py."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderPaid
from harness.events import paid
from harness.gateway import GatewayStub
from harness.kafka import produce, read_topic, wait_consumed
from harness.worker import metric_value

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


def sent_keys(records: list) -> Counter[bytes]:
    return Counter(r.key for r in records)


async def test_2000_paid_with_25pct_repeats_give_one_notification_per_order(tansu, tansu_worker_factory):
    gateway = await GatewayStub().start()
    try:
        worker = tansu_worker_factory(notifier_url=gateway.url)
        await asyncio.to_thread(worker.start().wait_ready)
        ids = [f"o-{i}" for i in range(1500)]
        events = [paid(i) for i in ids] + [paid(random.choice(ids)) for _ in range(500)]
        random.Random(7).shuffle(events)
        await produce(tansu.bootstrap, PAID, events)

        await wait_consumed(tansu.bootstrap, [PAID])  # every OrderPaid done, so every notification sent
        sent = await read_topic(tansu.bootstrap, SENT, until=lambda r: len(sent_keys(r)) >= 1500)

        per_order = sent_keys(sent)
        assert set(per_order) == {i.encode() for i in ids}
        assert [k for k, n in per_order.items() if n != 1] == []
        assert len(gateway.requests) == 1500
        assert [k for k, n in gateway.requests.items() if n != 1] == []
        text = await asyncio.to_thread(worker.metrics)
        assert metric_value(text, "event_processed_total", service="notifications", type="OrderPaid", status="success") == 1500
        assert metric_value(text, "event_processed_total", service="notifications", type="OrderPaid", status="duplicate") == 500
    finally:
        await gateway.stop()
