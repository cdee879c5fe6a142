"""``consumer_lag`` under ``PROCESSING_GUARANTEE=exactly_once`` on Apache Kafka (issue 20).

A topic written in transactions ends each transaction with a commit marker: one offset
that holds no record. A worker that has read and committed everything stands one
offset short of such a partition's high watermark, and ``consumer_lag`` (high
watermark − next offset to read) said 1 for ever on every partition of
``events.notification.sent.v1`` (the notifications service writes it transactionally;
order-state reads it). Caught up must read as 0, or an alert on lag never clears —
and ``/health`` calls a worker whose lag stays above 0 with no batch committed for
``STALL_TIMEOUT`` stalled: an idle exactly-once worker went 503.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.events import paid
from harness.gateway import GatewayStub
from harness.kafka import produce, wait_consumed
from harness.worker import http_get, metric_value
from streams.events import NotificationSent, OrderPaid

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()
STALL = 2.0


async def test_a_caught_up_worker_reports_no_lag_on_transactionally_written_topics(kafka, kafka_worker_factory):
    gateway = await GatewayStub().start()
    try:
        worker = kafka_worker_factory(notifier_url=gateway.url, services="notifications,order-state",
                                      processing_guarantee="exactly_once", batch_size="20",
                                      stall_timeout=str(STALL))
        await asyncio.to_thread(worker.start().wait_ready)
        await produce(kafka.bootstrap, PAID, [paid(f"lag-{i}") for i in range(200)])
        await wait_consumed(kafka.bootstrap, [PAID], timeout=120)
        deadline = time.monotonic() + 60
        while True:  # order-state has read every NotificationSent, then its lag must say so
            text = worker.metrics()
            read = metric_value(text, "event_processed_total", service="order-state", type="NotificationSent")
            lag = metric_value(text, "consumer_lag", topic=SENT)
            if read >= 200 and lag == 0:
                break
            assert time.monotonic() < deadline, f"{SENT}: {read:g} NotificationSent read, consumer_lag {lag:g}"
            await asyncio.sleep(0.2)
        # idle and caught up: the stall rule (no commit for STALL s while lag > 0) must not
        # fire; twice its interval after the last commit covers its first chance to
        answers = []
        until = time.monotonic() + 2 * STALL + 1
        while time.monotonic() < until:
            answers.append(http_get(f"{worker.url}/health")[0])
            await asyncio.sleep(0.25)
        assert set(answers) == {200}, f"/health while idle and caught up: {answers}"
    finally:
        await gateway.stop()
