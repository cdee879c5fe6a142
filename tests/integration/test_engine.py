"""The engine end to end on the embedded broker: every record of every service's
topics goes through streams/engine (never Faust's per-message path), offsets are
committed per batch, and a restart redelivers nothing — the guard against a Faust
upgrade that renames one of the private names the engine relies on (offsets would
silently stop committing)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderCreated, OrderPaid
from harness.events import created, paid
from harness.kafka import committed, end_offsets, produce, read_topic, wait_consumed
from harness.worker import ROOT, metric_value

pytestmark = pytest.mark.kafka

PAID, SENT, CREATED = OrderPaid.topic(), NotificationSent.topic(), OrderCreated.topic()


@pytest.mark.parametrize("services", ["notifications", "notifications,order-state,inventory"])
async def test_every_record_is_processed_committed_and_not_redelivered(broker, worker_factory, services):
    worker = worker_factory(services=services)
    await asyncio.to_thread(worker.start().wait_ready)
    ids = [f"o-{i}" for i in range(3000)]
    everything = "inventory" in services
    if everything:
        await produce(broker.bootstrap, CREATED, [created(i) for i in ids])
    await produce(broker.bootstrap, PAID, [paid(i) for i in ids] + [paid(i) for i in ids[:500]])
    await wait_consumed(broker.bootstrap, [PAID, *([CREATED] if everything else [])])
    sent = await read_topic(broker.bootstrap, SENT, expect=3000)
    assert sorted(Counter(r.key for r in sent).values()) == [1] * 3000
    text = await asyncio.to_thread(worker.metrics)
    assert metric_value(text, "event_processed_total", service="notifications", status="success") == 3000
    assert metric_value(text, "event_processed_total", service="notifications", status="duplicate") == 500
    # the group committed every offset (each batch acknowledged after every service that
    # reads the topic finished it): the shared topic's offsets too
    assert sum((await committed(broker.bootstrap, PAID)).values()) == 3500
    if everything:
        await wait_consumed(broker.bootstrap, [SENT, CREATED, "inventory.requests", "inventory.answers"])
        text = await asyncio.to_thread(worker.metrics)

        def paid_outcome(status: str) -> float:
            return metric_value(text, "event_processed_total", service="order-state", type="OrderPaid", status=status)

        # every order paid exactly once (some parked first, applied when OrderCreated came)
        assert (paid_outcome("success"), paid_outcome("duplicate")) == (3000, 500)

    await asyncio.to_thread(worker.stop)
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, [paid("o-new")])
    await wait_consumed(broker.bootstrap, [PAID])
    await read_topic(broker.bootstrap, SENT, expect=3001)
    text = await asyncio.to_thread(worker.metrics)
    assert metric_value(text, "event_processed_total", service="notifications") == 1  # nothing redelivered
    assert sum((await end_offsets(broker.bootstrap, SENT)).values()) == 3001


def test_agents_stay_declared_one_per_service_and_topic():
    from streams.registry import SERVICES

    out = subprocess.run([sys.executable, "-m", "faust", "-A", "streams", "agents"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for spec in SERVICES:
        for topic in (*spec.sources, *spec.retry_topics(3)):
            assert f"{spec.name}@{topic}" in out.stdout, out.stdout
