"""``faust -A streams dlq ls|show|redrive`` against real dead letters (issue 3)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderPaid
from tests.support.events import paid
from tests.support.gateway import GatewayStub
from tests.support.kafka import produce, read_topic
from tests.support.worker import ROOT

pytestmark = pytest.mark.kafka

PAID, SENT, DLQ = OrderPaid.topic(), NotificationSent.topic(), "notifications.dlq"


def dlq_cli(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BROKER": broker_url}
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams", "dlq", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


async def cli(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(dlq_cli, broker_url, *args)
    assert result.returncode == 0, result.stderr
    return result


async def test_redrive_after_gateway_recovers_processes_each_once_and_never_twice(broker, worker_factory):
    down = {"yes": True}
    gateway = await GatewayStub(lambda key, seen: 503 if down["yes"] else 200).start()
    try:
        worker = worker_factory(notifier_url=gateway.url, retry_delays="0.2")
        await asyncio.to_thread(worker.start().wait_ready)
        await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(20)])
        await produce(broker.bootstrap, PAID, [(b"bad", b"not json")])
        assert len(await read_topic(broker.bootstrap, DLQ, expect=21, idle=2)) == 21

        ls = await cli(broker.url, "ls", "--service", "notifications", "--reason", "max_attempts")
        assert "20 dead letters" in ls.stdout
        first_id = next(line.split()[0] for line in ls.stdout.splitlines() if line.startswith("notifications.dlq:"))
        assert "1 dead letters" in (await cli(broker.url, "ls", "--service", "notifications", "--reason", "decode_error")).stdout
        # order-state reads events.order.paid.v1 too and dead-letters the same record on its own.
        assert "2 dead letters" in (await cli(broker.url, "ls", "--reason", "decode_error")).stdout
        assert "0 dead letters" in (await cli(broker.url, "ls", "--since", "2099-01-01T00:00:00")).stdout
        shown = await cli(broker.url, "show", first_id)
        assert "x-dlq-reason: max_attempts" in shown.stdout and "x-source-topic: events.order.paid.v1" in shown.stdout

        dry = await cli(broker.url, "redrive", "--reason", "max_attempts", "--dry-run")
        assert "notifications: would redrive 20" in dry.stdout
        assert len(await read_topic(broker.bootstrap, PAID, idle=1)) == 21  # nothing sent

        down["yes"] = False
        part = await cli(broker.url, "redrive", "--service", "notifications", "--reason", "max_attempts", "--limit", "5")
        assert "notifications: redriven 5" in part.stdout
        assert "5/5" in part.stderr  # the progress bar
        rest = await cli(broker.url, "redrive", "--service", "notifications", "--reason", "max_attempts")
        assert "notifications: redriven 15, already redriven 5" in rest.stdout

        sent = await read_topic(broker.bootstrap, SENT, expect=20, idle=2)
        assert sorted(Counter(r.key for r in sent).values()) == [1] * 20

        again = await cli(broker.url, "redrive", "--service", "notifications", "--reason", "max_attempts")
        assert "notifications: redriven 0, already redriven 20" in again.stdout
        source = await read_topic(broker.bootstrap, PAID, idle=1)
        redriven = [r for r in source if "x-redriven-from" in r.headers]
        assert len(redriven) == 20 and len(source) == 41
        assert all(r.headers["x-redriven-from"].startswith(b"notifications.dlq:") for r in redriven)
        assert all("x-attempt" not in r.headers for r in redriven)
        assert len(await read_topic(broker.bootstrap, SENT, idle=2)) == 20
    finally:
        await gateway.stop()


async def test_bad_since_is_a_usage_error(broker):
    result = await asyncio.to_thread(dlq_cli, broker.url, "ls", "--since", "yesterday-ish")
    assert result.returncode != 0
    assert "--since" in result.stderr
