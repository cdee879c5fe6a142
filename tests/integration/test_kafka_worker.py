"""The worker on Apache Kafka (the session's one broker, emptied before each test).

What Tansu cannot show: Kafka's own ListOffsets (no workaround path taken), changelog
topics created compacted as the broker reports them, and a broker restarted with its
logs kept losing nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from aiokafka.client import AIOKafkaClient

from streams.events import NotificationSent, OrderPaid
from streams.faust_compat import list_offsets_may_be_short
from tests.support.events import paid
from tests.support.gateway import GatewayStub
from tests.support.kafka import create_worker_topics, produce, read_topic, topic_config, wait_consumed
from tests.support.worker import metric_value

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


async def test_capability_check_tells_kafka_from_tansu(kafka, broker):
    """On Kafka, ListOffsets is trusted (the Fetch workaround is not taken); on Tansu it is not."""
    answers = {}
    for name, b in (("kafka", kafka), ("tansu", broker)):
        client = AIOKafkaClient(bootstrap_servers=b.bootstrap)
        await client.bootstrap()
        try:
            answers[name] = await list_offsets_may_be_short(client)
        finally:
            await client.close()
    assert answers == {"kafka": False, "tansu": True}


async def test_notifications_end_to_end_on_kafka(kafka, kafka_worker_factory):
    gateway = await GatewayStub().start()
    try:
        await create_worker_topics(kafka.bootstrap)  # see its docstring: a worker gap on Kafka
        worker = kafka_worker_factory(notifier_url=gateway.url)
        await asyncio.to_thread(worker.start().wait_ready)
        ids = [f"o-{i}" for i in range(1500)]
        events = [paid(i) for i in ids] + [paid(random.choice(ids)) for _ in range(500)]
        random.Random(7).shuffle(events)
        await produce(kafka.bootstrap, PAID, events)

        await wait_consumed(kafka.bootstrap, [PAID])
        sent = await read_topic(kafka.bootstrap, SENT, until=lambda r: len(Counter(x.key for x in r)) >= 1500)
        per_order = Counter(r.key for r in sent)
        assert set(per_order) == {i.encode() for i in ids}
        assert [k for k, n in per_order.items() if n != 1] == []
        assert len(gateway.requests) == 1500
        text = await asyncio.to_thread(worker.metrics)
        assert metric_value(text, "event_processed_total", service="notifications", type="OrderPaid",
                            status="duplicate") == 500
    finally:
        await gateway.stop()


async def test_broker_restart_with_logs_kept_loses_nothing_and_changelogs_are_compacted(kafka, kafka_worker_factory):
    gateway = await GatewayStub().start()
    try:
        await create_worker_topics(kafka.bootstrap)  # see its docstring: a worker gap on Kafka
        worker = kafka_worker_factory(notifier_url=gateway.url)
        await asyncio.to_thread(worker.start().wait_ready)
        first = [f"a-{i}" for i in range(300)]
        await produce(kafka.bootstrap, PAID, [paid(i) for i in first])
        await wait_consumed(kafka.bootstrap, [PAID])

        # changelog topics as the broker itself reports them
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            changelogs = [t for t in await admin.list_topics() if t.endswith("-changelog")]
        finally:
            await admin.close()
        assert changelogs, "the worker made no changelog topic"
        for topic in changelogs:
            assert (await topic_config(kafka.bootstrap, topic))["cleanup.policy"] == "compact", topic

        # the broker stops (controlled shutdown) and comes back on the same ports and logs
        await asyncio.to_thread(kafka.stop)
        await asyncio.to_thread(kafka.start)
        second = [f"b-{i}" for i in range(300)]
        await produce(kafka.bootstrap, PAID, [paid(i) for i in second] + [paid(i) for i in first[:50]])
        await wait_consumed(kafka.bootstrap, [PAID])

        sent = await read_topic(kafka.bootstrap, SENT, until=lambda r: len(Counter(x.key for x in r)) >= 600)
        per_order = Counter(r.key for r in sent)
        assert set(per_order) == {i.encode() for i in first + second}, "an order was lost across the restart"
        assert [k for k, n in per_order.items() if n != 1] == [], "a repeat got through after the restart"
        assert worker.proc is not None and worker.proc.poll() is None, "the worker had to be restarted"
        assert worker.starts == 1
    finally:
        await gateway.stop()
