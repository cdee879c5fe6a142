"""The README's quick start (create and pay an order with curl, watch the worker),
run as written against the same three processes ``make run`` starts — on free
ports instead of 9092/8000/6066: on Apache Kafka (what ``make run`` starts where Java 17+
is found) and on Tansu (its fallback; part of Tansu's own job, the ``tansu`` fixture)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if "localhost:8000/orders" in b)


@pytest.mark.needs("curl")
async def test_readme_quickstart_runs_as_written(broker, worker_factory, orders_factory, tmp_path):
    await run_quickstart(broker, worker_factory, orders_factory, tmp_path)


@pytest.mark.needs("curl")
async def test_readme_quickstart_runs_as_written_on_tansu(tansu, tansu_worker_factory, orders_factory, tmp_path):
    await run_quickstart(tansu, tansu_worker_factory, orders_factory, tmp_path)


async def run_quickstart(broker, worker_factory, orders_factory, tmp_path) -> None:
    assert shutil.which("curl"), "curl is needed by the README's quick start"
    worker = worker_factory()
    orders = orders_factory("serve", kafka_broker=broker.url, database_url=f"sqlite:///{tmp_path / 'orders.db'}")
    await asyncio.to_thread(orders.start().wait_ready)
    await asyncio.to_thread(worker.start().wait_ready)
    script = quickstart().replace("localhost:8000", f"localhost:{orders.port}").replace(
        "localhost:6066", f"localhost:{worker.port}")
    result = await asyncio.to_thread(
        subprocess.run, ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120,
        cwd=README.parent, env={**os.environ, "KAFKA_BROKER": broker.url})
    assert result.returncode == 0, result.stderr
    lines = [line.replace(" ", "") for line in result.stdout.splitlines()]
    assert lines[0] == "stocksetfor3SKUs"
    assert '"status":"CREATED"' in lines[1] and '"reservation":"RESERVED"' in lines[1] and '"version":2' in lines[1]
    assert '"status":"PAID"' in lines[2]
    assert '"status":"NOTIFIED"' in lines[3] and '"version":4' in lines[3]
    assert '"pending":0' in lines[4] and '"sent":2' in lines[4]
    assert any(line.startswith("event_processed_total{") for line in lines[5:])
