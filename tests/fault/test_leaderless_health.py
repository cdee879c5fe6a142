"""``/health`` names the partitions that have no leader (issue 19 item 5), on a 3-node
Apache Kafka cluster.

The worker's topics at replication factor 1 (``TOPIC_REPLICATION_FACTOR``'s default):
SIGKILL the node that leads some of them, and once the controller has fenced it those
partitions have no leader at all — the broker still answers, so the broker-loss rule
says nothing. Before this, ``/health`` said 200 throughout: an orchestrator never
knew that part of the worker's input and output was gone. The probe now asks for the
worker's own topics; a partition without a leader for ``BROKER_LOSS_TIMEOUT`` is named
(503), and the first answer with a leader again clears it, without a worker restart.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from harness.worker import WorkerProcess, http_get
from streams.broker import KafkaBroker, KafkaSetupError, PortInUseError
from streams.events import OrderPaid

pytestmark = [pytest.mark.kafka, pytest.mark.needs("java")]

PAID = OrderPaid.topic()


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition → leader node of ``topic`` (-1: none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return {p["partition"]: p["leader"] for p in described["partitions"]}
    finally:
        await admin.close()


def wait_health(worker: WorkerProcess, want: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        assert worker.proc is not None and worker.proc.poll() is None, f"the worker exited:\n{worker.tail()}"
        status, body = http_get(f"{worker.url}/health")
        if status == want:
            return body
        assert time.monotonic() < deadline, f"/health not {want} in {timeout}s: {status} {body[:500]!r}"
        time.sleep(0.25)


async def test_a_partition_without_a_leader_is_named_by_health_and_clears_itself(tmp_path: Path) -> None:
    cluster = KafkaBroker(tmp_path / "kafka", nodes=3)
    try:
        cluster.start(die_with_parent=True)
    except (KafkaSetupError, PortInUseError) as exc:
        pytest.fail(f"Apache Kafka could not start: {exc}", pytrace=False)
    worker = WorkerProcess(cluster.url, tmp_path / "data", tmp_path / "worker.log", services="notifications",
                           broker_loss_timeout="4")
    try:
        await asyncio.to_thread(worker.start().wait_ready, 180.0)
        led = await leaders(cluster.bootstrap, PAID)
        victim = led[0]
        orphans = sorted(p for p, node in led.items() if node == victim)
        cluster.kill_node(victim)
        body = await asyncio.to_thread(wait_health, worker, 503, 90.0)
        assert b"without a leader" in body, body
        for p in orphans:
            assert f"{PAID}[{p}]".encode() in body, body
        cluster.restart_node(victim)
        await asyncio.to_thread(wait_health, worker, 200, 120.0)
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail()  # never exited
        assert "partition(s) without a leader" in worker.log_path.read_text(errors="replace")
    finally:
        worker.stop()
        cluster.stop()
