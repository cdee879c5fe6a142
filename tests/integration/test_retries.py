"""Retry ladder and dead letters against a local gateway stub (issue 3)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderPaid
from harness.events import paid
from harness.gateway import GatewayStub, always
from harness.kafka import produce, read_topic, wait_consumed
from harness.worker import metric_value

pytestmark = pytest.mark.kafka

PAID, SENT, DLQ = OrderPaid.topic(), NotificationSent.topic(), "notifications.dlq"
TIERS = [f"notifications.retry.{n}" for n in (1, 2, 3)]


async def start_worker(worker_factory, gateway: GatewayStub, delays: str):
    worker = worker_factory(notifier_url=gateway.url, retry_delays=delays, notifier_timeout="2")
    await asyncio.to_thread(worker.start().wait_ready)
    return worker


async def wait_until(predicate, timeout: float = 60.0, step: float = 0.2) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(step)
    return False


async def test_gateway_fails_twice_then_succeeds_one_notification_after_two_retries(broker, worker_factory):
    delays = (0.5, 1.0, 1.5)
    gateway = await GatewayStub(lambda key, seen: 503 if seen < 2 else 200).start()
    try:
        worker = await start_worker(worker_factory, gateway, ",".join(map(str, delays)))
        await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(20)])
        sent = await read_topic(broker.bootstrap, SENT, expect=20, timeout=60)
        await wait_consumed(broker.bootstrap, [PAID, *TIERS])  # no attempt left in flight
        sent = await read_topic(broker.bootstrap, SENT, expect=20)
        assert sorted(Counter(r.key for r in sent).values()) == [1] * 20
        assert set(gateway.requests.values()) == {3}  # 1 attempt + exactly 2 retries
        for key, times in gateway.times.items():
            gaps = [b - a for a, b in zip(times, times[1:])]
            assert gaps[0] >= delays[0] and gaps[1] >= delays[1], (key, gaps)
        text = await asyncio.to_thread(worker.metrics)
        assert metric_value(text, "retry_scheduled_total", service="notifications", tier="1") == 20
        assert metric_value(text, "retry_scheduled_total", service="notifications", tier="2") == 20
        assert metric_value(text, "retry_scheduled_total", service="notifications", tier="3") == 0
        assert metric_value(text, "event_processed_total", service="notifications", status="retry") == 40
        assert metric_value(text, "event_processed_total", service="notifications", status="success") == 20
    finally:
        await gateway.stop()


async def test_gateway_always_503_dead_letters_after_all_retries_with_source_headers(broker, worker_factory):
    gateway = await GatewayStub(always(503)).start()
    try:
        worker = await start_worker(worker_factory, gateway, "0.2,0.3")
        await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(10)])
        source = {r.key: r for r in await read_topic(broker.bootstrap, PAID, expect=10)}
        dead = await read_topic(broker.bootstrap, DLQ, expect=10)
        assert len(dead) == 10
        for d in dead:
            src = source[d.key]
            h = {k: v.decode() for k, v in d.headers.items()}
            assert d.value == src.value
            assert h["x-attempt"] == "3"  # len(RETRY_DELAYS) retries + 1
            assert h["x-dlq-reason"] == "max_attempts"
            assert h["x-source-topic"] == PAID
            assert h["x-source-partition"] == str(src.partition)
            assert h["x-source-offset"] == str(src.offset)
            assert h["x-error-type"] == "GatewayUnavailable" and "503" in h["x-error-message"]
            assert int(h["x-first-failed-at"]) <= int(h["x-failed-at"])
        assert set(gateway.requests.values()) == {3}
        await wait_consumed(broker.bootstrap, [PAID, *TIERS[:2]])
        assert await read_topic(broker.bootstrap, SENT) == []
        text = await asyncio.to_thread(worker.metrics)
        assert metric_value(text, "dead_letter_total", service="notifications", reason="max_attempts") == 10
    finally:
        await gateway.stop()


async def test_gateway_400_dead_letters_at_once_as_non_retryable(broker, worker_factory):
    gateway = await GatewayStub(always(400)).start()
    try:
        await start_worker(worker_factory, gateway, "5,5")
        await produce(broker.bootstrap, PAID, [paid("o-1")])
        dead = await read_topic(broker.bootstrap, DLQ, expect=1)
        assert [d.headers["x-dlq-reason"] for d in dead] == [b"non_retryable"]
        assert dead[0].headers["x-attempt"] == b"1"
        assert gateway.requests["o-1"] == 1
    finally:
        await gateway.stop()


async def test_slow_retry_tier_does_not_delay_the_main_topic(broker, worker_factory):
    delay = 30.0
    gateway = await GatewayStub(lambda key, seen: 503 if key.startswith("slow-") else 200).start()
    try:
        worker = await start_worker(worker_factory, gateway, str(delay))
        loop = asyncio.get_running_loop()
        await produce(broker.bootstrap, PAID, [paid(f"slow-{i}") for i in range(200)])

        async def all_scheduled() -> bool:
            text = await asyncio.to_thread(worker.metrics)
            return metric_value(text, "retry_scheduled_total", service="notifications") >= 200

        assert await wait_until(all_scheduled)
        first_scheduled = loop.time()
        await produce(broker.bootstrap, PAID, [paid(f"fast-{i}") for i in range(1000)])
        sent = await read_topic(broker.bootstrap, SENT, expect=1000, timeout=delay)
        done = loop.time()
        assert len({r.key for r in sent}) == 1000
        # Every main-topic event was handled while all 200 retries were still waiting.
        assert done - first_scheduled < delay
        assert all(gateway.requests[f"slow-{i}"] == 1 for i in range(200))
        text = await asyncio.to_thread(worker.metrics)
        assert metric_value(text, "retry_oldest_waiting_age_seconds", service="notifications") > 0
    finally:
        await gateway.stop()


async def test_duplicate_arriving_while_retry_pending_is_processed_once(broker, worker_factory):
    gateway = await GatewayStub(lambda key, seen: 503 if seen == 0 else 200).start()
    try:
        worker = await start_worker(worker_factory, gateway, "3")
        await produce(broker.bootstrap, PAID, [paid("o-1")])

        async def scheduled() -> bool:
            text = await asyncio.to_thread(worker.metrics)
            return metric_value(text, "retry_scheduled_total", service="notifications") >= 1

        assert await wait_until(scheduled)
        await produce(broker.bootstrap, PAID, [paid("o-1")])  # the duplicate, while the retry waits
        sent = await read_topic(broker.bootstrap, SENT, expect=1)
        assert len(sent) == 1

        async def retry_ran() -> bool:
            text = await asyncio.to_thread(worker.metrics)
            return metric_value(text, "event_processed_total", service="notifications", status="duplicate") >= 1

        assert await wait_until(retry_ran, timeout=20)
        assert gateway.requests["o-1"] == 2  # the failed call and one successful call
        assert len(await read_topic(broker.bootstrap, SENT)) == 1
    finally:
        await gateway.stop()
