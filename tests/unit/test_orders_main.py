"""``python -m orders serve|relay`` as processes (no broker needed): a taken port is one
line and exit 1; the process running the relay serves /metrics with gauges kept
current on a timer; an API-only process exports no outbox gauges; log lines."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from orders import outbox
from orders.db import SqliteDatabase
from orders.settings import OrdersSettings
from streams.broker import free_port
from streams.events import OrderCreated, OrderItem
from harness.orders import OrdersProcess
from harness.worker import ROOT, http_get

NO_BROKER = "kafka://127.0.0.1:1"  # nothing listens there: the relay's rows wait


def clean_env(**env: str) -> dict[str, str]:
    names = {n.upper() for n in OrdersSettings.model_fields}
    return {**{k: v for k, v in os.environ.items() if k.upper() not in names}, **env}


@pytest.fixture
def processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., OrdersProcess]]:
    for name in OrdersSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    made: list[OrdersProcess] = []

    def make(command: str, **env: str) -> OrdersProcess:
        p = OrdersProcess(command, tmp_path / f"{command}-{len(made)}.log",
                          database_url=f"sqlite:///{tmp_path / 'orders.db'}", kafka_broker=NO_BROKER, **env)
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill()


def add_rows(db_path: Path, n: int, start: int = 0) -> None:
    async def go() -> None:
        db = SqliteDatabase(str(db_path))
        await db.setup()
        try:
            for i in range(start, start + n):
                async with db.transaction() as tx:
                    await outbox.add_event(tx, OrderCreated(
                        order_id=f"o-{i}", user_id="u", items=(OrderItem(sku="s", qty=1),), amount=Decimal(1)),
                        now=time.time())
        finally:
            await db.close()

    asyncio.run(go())


def metric(url: str, name: str) -> float | None:
    status, body = http_get(f"{url}/metrics", timeout=2)
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.M)
    return float(found.group(1)) if found else None


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- a port in use ----------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "setting"), [("serve", "ORDERS_PORT"), ("relay", "RELAY_PORT")])
def test_a_port_in_use_is_one_line_naming_the_setting_and_exit_1(tmp_path: Path, command: str, setting: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'o.db'}", KAFKA_BROKER=NO_BROKER,
                        ORDERS_PORT=str(port if setting == "ORDERS_PORT" else free_port()),
                        RELAY_PORT=str(port if setting == "RELAY_PORT" else free_port()))
        proc = subprocess.run([sys.executable, "-m", "orders", command], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"orders: port {port} is in use (set {setting})"], proc.stderr


# -- metrics where the relay runs ------------------------------------------------------------------


def test_the_relay_process_serves_metrics_refreshed_on_a_timer(processes: Callable[..., OrdersProcess],
                                                                tmp_path: Path) -> None:
    """Compose runs the relay alone: its /metrics (RELAY_PORT) has the outbox gauges, and
    they follow the table with nobody calling /outbox/stats."""
    add_rows(tmp_path / "orders.db", 3)
    relay = processes("relay", outbox_stats_interval="0.2", relay_send_timeout="1")
    relay.start().wait_ready()
    wait_for(lambda: metric(relay.http_url, "outbox_pending_rows") == 3)
    assert metric(relay.http_url, "outbox_published_total") == 0
    assert metric(relay.http_url, "outbox_failed_rows") == 0
    add_rows(tmp_path / "orders.db", 2, start=3)  # another process commits rows
    wait_for(lambda: metric(relay.http_url, "outbox_pending_rows") == 5)
    wait_for(lambda: (metric(relay.http_url, "outbox_oldest_pending_age_seconds") or 0) > 0)
    assert metric(relay.http_url, "orders_http_requests_total") is None


def test_an_api_only_process_exports_no_outbox_metrics(processes: Callable[..., OrdersProcess],
                                                       tmp_path: Path) -> None:
    add_rows(tmp_path / "orders.db", 2)
    api = processes("serve", relay_enabled="false")
    api.start().wait_ready()
    assert json.loads(http_get(f"{api.url}/outbox/stats")[1])["pending"] == 2
    text = http_get(f"{api.url}/metrics")[1].decode()
    assert "outbox_" not in text
    assert "orders_http_requests_total" in text


def test_serve_with_the_relay_exports_the_gauges_without_a_stats_request(processes: Callable[..., OrdersProcess],
                                                                          tmp_path: Path) -> None:
    add_rows(tmp_path / "orders.db", 4)
    service = processes("serve", outbox_stats_interval="0.2", relay_send_timeout="1")
    service.start().wait_ready()
    wait_for(lambda: metric(service.url, "outbox_pending_rows") == 4)


# -- log lines -------------------------------------------------------------------------------------


def log_lines(p: OrdersProcess) -> list[str]:
    text = p.log_path.read_text()
    return [line for line in text.split("=====\n", 2)[-1].splitlines() if line.strip()]


def test_start_up_is_one_line_per_component(processes: Callable[..., OrdersProcess], tmp_path: Path) -> None:
    service = processes("serve")
    service.start().wait_ready()
    # The relay has run its first round: it took the SQLite relay lock and wrote its name.
    lock = tmp_path / "orders.db.relay-lock"
    wait_for(lambda: lock.exists() and "pid" in lock.read_text())
    # Stopping ends the log: whatever start-up wrote is in it, then the one stop line.
    service.stop()
    lines = log_lines(service)
    assert len(lines) == 3, lines
    assert "order API ready on http://127.0.0.1:" in lines[0]
    assert "outbox relay" in lines[1] and "ready" in lines[1]
    assert "published 0 rows" in lines[2]


def test_log_format_json_is_one_object_per_line(processes: Callable[..., OrdersProcess], tmp_path: Path) -> None:
    add_rows(tmp_path / "orders.db", 1)
    relay = processes("relay", log_format="json", relay_send_timeout="1")
    relay.start().wait_ready()
    wait_for(lambda: len(log_lines(relay)) >= 2)
    relay.stop()
    lines = log_lines(relay)
    records = [json.loads(line) for line in lines]  # every line is JSON
    for r in records:
        assert {"time", "level", "service", "logger", "message"} <= set(r)
        assert r["service"] == "orders-relay"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"])
    assert "ready" in records[0]["message"]
    warning = next(r for r in records if r["level"] == "WARNING")
    assert "cannot reach the broker" in warning["message"]
