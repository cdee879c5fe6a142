"""Retry and dead-letter topics get explicit configs when the worker creates them
(issue 19, item 5): read back from Apache Kafka (Tansu's DescribeConfigs answers none)."""

from __future__ import annotations

import asyncio
import time

import pytest

from streams.events import NotificationSent, OrderPaid
from harness.events import paid
from harness.kafka import produce, read_topic, topic_config

pytestmark = pytest.mark.kafka


async def configs_when_created(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await topic_config(bootstrap, topic)
        except AssertionError:  # not created yet (UNKNOWN_TOPIC_OR_PARTITION)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_worker_started_on_an_empty_cluster_creates_its_topics_and_processes_at_once(kafka, kafka_worker_factory):
    """Its source topics did not exist: the subscription auto-created them with the
    broker's defaults and the worker was assigned nothing for 5 minutes (its next
    metadata refresh). Now it creates them, as configured, before it subscribes; the
    retry and DLQ topics get explicit retention (issue 19, item 5)."""
    worker = kafka_worker_factory(dlq_retention=str(10 * 86400), retry_retention=str(2 * 86400),
                                  max_message_bytes=str(4 * 1024 * 1024), retry_delays="1,2")
    await asyncio.to_thread(worker.start().wait_ready)
    for service in ("notifications", "order-state", "inventory"):
        dlq = await configs_when_created(kafka.bootstrap, f"{service}.dlq")
        assert dlq["retention.ms"] == str(10 * 86400 * 1000)
        assert dlq["cleanup.policy"] == "delete"
        assert dlq["max.message.bytes"] == str(4 * 1024 * 1024)
        for tier in (1, 2):
            retry = await configs_when_created(kafka.bootstrap, f"{service}.retry.{tier}")
            assert retry["retention.ms"] == str(2 * 86400 * 1000)
            assert retry["max.message.bytes"] == str(4 * 1024 * 1024)
    ids = [f"o-{i}" for i in range(20)]
    await produce(kafka.bootstrap, OrderPaid.topic(), [paid(i) for i in ids])
    sent = await read_topic(kafka.bootstrap, NotificationSent.topic(),
                            until=lambda rs: {r.key for r in rs} >= {i.encode() for i in ids}, timeout=90)
    assert {r.key for r in sent} == {i.encode() for i in ids}
