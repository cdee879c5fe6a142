"""The README's quick start (create and pay an order with curl, watch the worker),
run as written against the same three processes ``make run`` starts — on free
ports instead of 9092/8000/6066."""

from __future__ import annotations

import asyncio
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


async def test_readme_quickstart_runs_as_written(broker, worker_factory, orders_factory, tmp_path):
    assert shutil.which("curl"), "curl is needed by the README's quick start"
    worker = worker_factory()
    orders = orders_factory("serve", kafka_broker=broker.url, database_url=f"sqlite:///{tmp_path / 'orders.db'}")
    await asyncio.to_thread(orders.start().wait_ready)
    await asyncio.to_thread(worker.start().wait_ready)
    script = quickstart().replace("localhost:8000", f"localhost:{orders.port}").replace(
        "localhost:6066", f"localhost:{worker.port}")
    result = await asyncio.to_thread(
        subprocess.run, ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert '"status":"CREATED"' in lines[0].replace(" ", "")
    assert '"status":"NOTIFIED"' in lines[2].replace(" ", "")
    assert '"pending":0' in lines[3].replace(" ", "") and '"sent":2' in lines[3].replace(" ", "")
    assert any(line.startswith("event_processed_total{") for line in lines[4:])
