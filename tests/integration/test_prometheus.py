"""A real Prometheus server (Debian's package) scrapes a running worker, and its query
API returns ``event_processed_total``: the dashboard's data path, end to end (issue 7)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse

import pytest

from streams.broker import free_port
from streams.events import OrderPaid
from harness.events import paid
from harness.kafka import produce
from harness.worker import http_get

pytestmark = pytest.mark.kafka


@pytest.mark.needs("prometheus")
async def test_prometheus_scrapes_the_worker_and_answers_event_processed_total(broker, worker_factory, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: scripts/ensure-system-packages installs Debian's prometheus"
    worker = worker_factory()
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, OrderPaid.topic(), [paid(f"o-{i}") for i in range(50)])

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: worker\n    static_configs: [{{targets: ['127.0.0.1:{worker.port}']}}]\n"
    )
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    try:
        query = urllib.parse.quote('sum by (status) (event_processed_total{service="notifications"})')
        found: dict[str, float] = {}
        for _ in range(120):
            await asyncio.sleep(0.5)
            try:
                code, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/api/v1/query?query={query}")
            except OSError:
                continue
            if code == 200:
                data = json.loads(body)["data"]["result"]
                found = {r["metric"].get("status", ""): float(r["value"][1]) for r in data}
                if found.get("success") == 50:
                    break
        assert found.get("success") == 50, found
        code, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/api/v1/targets")
        targets = json.loads(body)["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    finally:
        server.terminate()
        server.wait(20)
