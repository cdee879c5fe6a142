"""``faust -A streams reconcile``: reports exactly the orders whose events were lost,
exits 3 while they are, and ``--repair`` makes the next run report nothing (issue 6)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from harness.orders import OrdersClient
from harness.worker import ROOT, http_get

pytestmark = pytest.mark.kafka


def reconcile_cli(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams", "reconcile", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def reported(out: str) -> dict[str, str]:
    return {m["order_id"]: m["kind"] for m in json.loads(out)["mismatches"]}


async def test_reconcile_reports_lost_orders_and_repair_converges(broker, orders_factory, worker_factory, tmp_path):
    db_path = tmp_path / "orders.db"
    common = {"kafka_broker": broker.url, "database_url": f"sqlite:///{db_path}"}
    api = orders_factory("serve", relay_enabled="false", **common)
    worker = worker_factory("w1", database_url=common["database_url"])
    await asyncio.to_thread(api.start().wait_ready)
    await asyncio.to_thread(worker.start().wait_ready)

    client = OrdersClient(api.url)
    ids = await client.many(30)  # created and paid
    lost_all, lost_paid = ids[:3], ids[3:5]
    # "Delete events on their way": the relay is told they were sent.
    with sqlite3.connect(db_path) as conn:
        conn.executemany("UPDATE outbox SET status = 'sent' WHERE aggregate_id = ?", [(i,) for i in lost_all])
        conn.executemany("UPDATE outbox SET status = 'sent' WHERE aggregate_id = ? AND topic = 'events.order.paid.v1'",
                         [(i,) for i in lost_paid])
    relay = orders_factory("relay", relay_id="r1", **common)
    await asyncio.to_thread(relay.start().wait_ready)

    healthy = [i for i in ids if i not in lost_all + lost_paid]

    async def converged(wanted: list[str]) -> bool:
        for _ in range(120):
            states = [json.loads(http_get(f"{worker.url}/orders/{i}")[1]).get("status") for i in wanted]
            if all(s == "NOTIFIED" for s in states):
                return True
            await asyncio.sleep(0.5)
        return False

    assert await converged(healthy)
    env = {"KAFKA_BROKER": broker.url, "DATABASE_URL": common["database_url"], "WEB_PORT": str(worker.port),
           "DATA_DIR": str(tmp_path / "reconcile")}
    first = await asyncio.to_thread(reconcile_cli, env, "--sla", "0", "--json", code=3)  # mismatches: exit 3
    assert reported(first) == {**{i: "missing" for i in lost_all}, **{i: "stuck" for i in lost_paid}}
    assert json.loads(first)["counts"] == {"missing": 3, "stuck": 2, "diverged": 0}
    text = await asyncio.to_thread(reconcile_cli, env, "--sla", "0", code=3)
    assert "30 orders checked: 3 missing, 2 stuck, 0 diverged" in text
    assert all(i in text for i in lost_all + lost_paid)
    prom = (tmp_path / "reconcile" / "reconcile.prom").read_text()
    assert 'reconciliation_mismatches{kind="missing"} 3' in prom

    # the order service is on OrderCreated v2 by now (issue 22): the repair publishes v2 too
    repaired = await asyncio.to_thread(reconcile_cli, {**env, "ORDER_EVENTS_VERSION": "2"}, "--sla", "0", "--repair",
                                       code=3)  # found some
    assert "repair: 8 events re-published through the outbox" in repaired  # 3 × (created + paid) + 2 × paid
    with sqlite3.connect(db_path) as conn:
        topics = sorted(t for (t,) in conn.execute("SELECT topic FROM outbox WHERE headers LIKE '%x-repair%'"))
    assert topics == ["events.order.created.v2"] * 3 + ["events.order.paid.v1"] * 5
    assert await converged(lost_all + lost_paid)
    second = await asyncio.to_thread(reconcile_cli, env, "--sla", "0", "--repair", "--json")
    assert reported(second) == {} and json.loads(second)["repaired_events"] == 0
    clean = await asyncio.to_thread(reconcile_cli, env, "--sla", "0")
    assert "30 orders checked: 0 missing, 0 stuck, 0 diverged" in clean
    states = [json.loads(http_get(f"{worker.url}/orders/{i}")[1]) for i in ids]
    # created, paid, notified, and the inventory's answer (no stock was seeded: rejected)
    assert all((s["status"], s["reservation"], s["version"]) == ("NOTIFIED", "REJECTED", 4) for s in states)
