"""orders.api.OrdersApi over HTTP (aiohttp test server) on SQLite: every write is one
transaction holding the order row and its outbox row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from orders import outbox
from orders.api import OrdersApi
from orders.db import SqliteDatabase
from orders.metrics import OrdersMetrics
from streams.events import OrderCancelled, OrderCreated, OrderPaid
from tests.unit.fakes import Clock

T0 = 1_700_000_000.0
CREATED = "events.order.created.v1"
PAID = "events.order.paid.v1"
CANCELLED = "events.order.cancelled.v1"

VALID = {"user_id": "u-1", "items": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-2", "qty": 1}], "amount": "12.50"}


@dataclass
class Ctx:
    client: TestClient
    db: SqliteDatabase
    api: OrdersApi
    clock: Clock
    commits: list[int]

    async def outbox_rows(self) -> list[dict[str, Any]]:
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT id, aggregate_id, topic, key, payload, status, created_at FROM outbox ORDER BY position"
            )
        return [{"id": r[0], "aggregate_id": r[1], "topic": r[2], "key": bytes(r[3]), "payload": bytes(r[4]),
                 "status": r[5], "created_at": r[6]} for r in rows]

    async def orders(self) -> list[tuple[Any, ...]]:
        async with self.db.transaction() as tx:
            return await tx.fetchall("SELECT order_id, user_id, items, amount, status FROM orders")

    async def create(self, body: Any = None) -> str:
        resp = await self.client.post("/orders", json=VALID if body is None else body)
        assert resp.status == 201, await resp.text()
        return (await resp.json())["order_id"]

    def requests(self, route: str, status: int) -> float:
        v = self.api.metrics.registry.get_sample_value(
            "orders_http_requests_total", {"route": route, "status": str(status)})
        return v or 0.0


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Ctx]:
    db = SqliteDatabase(str(tmp_path / "orders.db"))
    await db.setup()
    commits: list[int] = []
    clock = Clock(T0)
    api = OrdersApi(db, OrdersMetrics(), on_commit=lambda: commits.append(1), clock=clock)
    async with TestClient(TestServer(api.app())) as client:
        yield Ctx(client, db, api, clock, commits)
    await db.close()


# -- create ----------------------------------------------------------------------------


async def test_create_writes_the_order_and_one_created_row_in_the_same_db(ctx: Ctx) -> None:
    resp = await ctx.client.post("/orders", json=VALID)
    assert resp.status == 201
    order_id = (await resp.json())["order_id"]
    assert order_id.startswith("o-")

    [order] = await ctx.orders()
    assert order[0] == order_id and order[1] == "u-1" and order[4] == "CREATED"
    assert json.loads(order[2]) == VALID["items"]
    assert Decimal(order[3]) == Decimal("12.50")

    [row] = await ctx.outbox_rows()
    assert row["topic"] == CREATED
    assert row["aggregate_id"] == order_id
    assert row["key"] == order_id.encode()
    assert row["status"] == "pending"
    assert row["created_at"] == T0
    event = OrderCreated.model_validate_json(row["payload"])
    assert str(event.event_id) == row["id"]
    assert event.order_id == order_id and event.user_id == "u-1"
    assert event.amount == Decimal("12.50")
    assert [(i.sku, i.qty) for i in event.items] == [("sku-1", 2), ("sku-2", 1)]
    assert event.occurred_at is not None and event.occurred_at.timestamp() == T0
    assert ctx.commits == [1]
    assert ctx.requests("/orders", 201) == 1


async def test_each_create_gets_its_own_order_id(ctx: Ctx) -> None:
    ids = {await ctx.create() for _ in range(3)}
    assert len(ids) == 3
    assert {r["aggregate_id"] for r in await ctx.outbox_rows()} == ids
    assert len(ctx.commits) == 3


async def test_a_zero_amount_is_valid(ctx: Ctx) -> None:
    await ctx.create({**VALID, "amount": 0})
    assert len(await ctx.outbox_rows()) == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({k: v for k, v in VALID.items() if k != "items"}, id="missing-items"),
        pytest.param({**VALID, "items": []}, id="empty-items"),
        pytest.param({**VALID, "amount": "-1"}, id="negative-amount"),
        pytest.param({**VALID, "amount": -0.01}, id="negative-amount-number"),
        pytest.param({**VALID, "coupon": "FREE"}, id="extra-field"),
        pytest.param({**VALID, "items": [{"sku": "s", "qty": 0}]}, id="zero-qty"),
        pytest.param({**VALID, "items": [{"sku": "s", "qty": 1, "color": "red"}]}, id="extra-item-field"),
        pytest.param({**VALID, "user_id": ""}, id="empty-user"),
        pytest.param("not json", id="not-json"),
    ],
)
async def test_an_invalid_order_is_rejected_with_422_and_writes_nothing(ctx: Ctx, body: Any) -> None:
    if isinstance(body, str):
        resp = await ctx.client.post("/orders", data=body)
    else:
        resp = await ctx.client.post("/orders", json=body)
    assert resp.status == 422
    payload = await resp.json()
    assert payload["error"] == "invalid order"
    assert payload["detail"]
    assert await ctx.orders() == []
    assert await ctx.outbox_rows() == []
    assert ctx.commits == []


# -- pay / cancel ------------------------------------------------------------------------


async def test_pay_writes_an_order_paid_row(ctx: Ctx) -> None:
    order_id = await ctx.create()
    ctx.clock.now = T0 + 5
    resp = await ctx.client.post(f"/orders/{order_id}/pay")
    assert resp.status == 202
    assert await resp.json() == {"order_id": order_id, "status": "PAID"}

    rows = await ctx.outbox_rows()
    assert [r["topic"] for r in rows] == [CREATED, PAID]
    event = OrderPaid.model_validate_json(rows[1]["payload"])
    assert event.order_id == order_id and event.user_id == "u-1" and event.amount == Decimal("12.50")
    assert str(event.event_id) == rows[1]["id"]
    assert rows[1]["aggregate_id"] == order_id and rows[1]["created_at"] == T0 + 5
    assert [o[4] for o in await ctx.orders()] == ["PAID"]
    assert len(ctx.commits) == 2
    assert ctx.requests("/orders/{order_id}/pay", 202) == 1


async def test_paying_twice_is_idempotent(ctx: Ctx) -> None:
    order_id = await ctx.create()
    first = await ctx.client.post(f"/orders/{order_id}/pay")
    second = await ctx.client.post(f"/orders/{order_id}/pay")
    assert first.status == second.status == 202
    assert (await second.json())["status"] == "PAID"
    assert [r["topic"] for r in await ctx.outbox_rows()] == [CREATED, PAID]
    assert len(ctx.commits) == 2  # the repeated pay added no row, so no wake-up


async def test_concurrent_pays_write_one_paid_row(ctx: Ctx) -> None:
    order_id = await ctx.create()
    resps = await asyncio.gather(*(ctx.client.post(f"/orders/{order_id}/pay") for _ in range(5)))
    assert [r.status for r in resps] == [202] * 5
    assert [r["topic"] for r in await ctx.outbox_rows()] == [CREATED, PAID]


async def test_concurrent_pay_and_cancel_one_wins(ctx: Ctx) -> None:
    order_id = await ctx.create()
    pay, cancel = await asyncio.gather(ctx.client.post(f"/orders/{order_id}/pay"),
                                       ctx.client.post(f"/orders/{order_id}/cancel"))
    assert sorted([pay.status, cancel.status]) == [202, 409]
    topics = [r["topic"] for r in await ctx.outbox_rows()]
    assert topics in ([CREATED, PAID], [CREATED, CANCELLED])
    status = (await (await ctx.client.get(f"/orders/{order_id}")).json())["status"]
    assert status == ("PAID" if pay.status == 202 else "CANCELLED")


async def test_cancel_after_pay_is_a_conflict(ctx: Ctx) -> None:
    order_id = await ctx.create()
    assert (await ctx.client.post(f"/orders/{order_id}/pay")).status == 202
    resp = await ctx.client.post(f"/orders/{order_id}/cancel")
    assert resp.status == 409
    body = await resp.json()
    assert body["status"] == "PAID" and body["order_id"] == order_id
    assert [r["topic"] for r in await ctx.outbox_rows()] == [CREATED, PAID]
    assert [o[4] for o in await ctx.orders()] == ["PAID"]
    assert len(ctx.commits) == 2
    assert ctx.requests("/orders/{order_id}/cancel", 409) == 1


async def test_cancel_unpaid_writes_an_order_cancelled_row(ctx: Ctx) -> None:
    order_id = await ctx.create()
    resp = await ctx.client.post(f"/orders/{order_id}/cancel")
    assert resp.status == 202
    assert await resp.json() == {"order_id": order_id, "status": "CANCELLED"}
    rows = await ctx.outbox_rows()
    assert [r["topic"] for r in rows] == [CREATED, CANCELLED]
    event = OrderCancelled.model_validate_json(rows[1]["payload"])
    assert event.order_id == order_id and event.reason == "customer"
    assert [o[4] for o in await ctx.orders()] == ["CANCELLED"]
    assert len(ctx.commits) == 2

    # Cancelling again is idempotent.
    again = await ctx.client.post(f"/orders/{order_id}/cancel")
    assert again.status == 202
    assert len(await ctx.outbox_rows()) == 2
    assert len(ctx.commits) == 2


async def test_pay_after_cancel_is_a_conflict(ctx: Ctx) -> None:
    order_id = await ctx.create()
    assert (await ctx.client.post(f"/orders/{order_id}/cancel")).status == 202
    resp = await ctx.client.post(f"/orders/{order_id}/pay")
    assert resp.status == 409
    assert (await resp.json())["status"] == "CANCELLED"
    assert [r["topic"] for r in await ctx.outbox_rows()] == [CREATED, CANCELLED]
    assert [o[4] for o in await ctx.orders()] == ["CANCELLED"]


@pytest.mark.parametrize(("method", "path"), [("POST", "/pay"), ("POST", "/cancel"), ("GET", "")])
async def test_an_unknown_order_is_404(ctx: Ctx, method: str, path: str) -> None:
    await ctx.create()
    resp = await ctx.client.request(method, f"/orders/o-nope{path}")
    assert resp.status == 404
    assert await resp.json() == {"error": "unknown order", "order_id": "o-nope"}
    assert [r["topic"] for r in await ctx.outbox_rows()] == [CREATED]
    assert len(ctx.commits) == 1


# -- reads -----------------------------------------------------------------------------


async def test_get_returns_the_order(ctx: Ctx) -> None:
    order_id = await ctx.create()
    ctx.clock.now = T0 + 9
    await ctx.client.post(f"/orders/{order_id}/pay")
    resp = await ctx.client.get(f"/orders/{order_id}")
    assert resp.status == 200
    assert await resp.json() == {
        "order_id": order_id, "user_id": "u-1", "items": VALID["items"], "amount": "12.50",
        "status": "PAID", "created_at": T0, "updated_at": T0 + 9,
    }


async def test_outbox_stats(ctx: Ctx) -> None:
    resp = await ctx.client.get("/outbox/stats")
    assert await resp.json() == {"pending": 0, "sent": 0, "failed": 0, "oldest_pending_age_seconds": 0.0}

    order_id = await ctx.create()
    ctx.clock.now = T0 + 2
    await ctx.client.post(f"/orders/{order_id}/pay")
    ctx.clock.now = T0 + 7.5
    resp = await ctx.client.get("/outbox/stats")
    assert resp.status == 200
    assert await resp.json() == {"pending": 2, "sent": 0, "failed": 0, "oldest_pending_age_seconds": 7.5}
    assert ctx.api.metrics.registry.get_sample_value("outbox_pending_rows") == 2
    assert ctx.api.metrics.registry.get_sample_value("outbox_oldest_pending_age_seconds") == 7.5


async def test_health_and_metrics(ctx: Ctx) -> None:
    await ctx.create()
    assert await (await ctx.client.get("/health")).json() == {"status": "ok"}
    text = await (await ctx.client.get("/metrics")).text()
    assert 'orders_http_requests_total{route="/orders",status="201"} 1.0' in text


# -- atomicity -------------------------------------------------------------------------


async def test_a_failing_create_rolls_back_the_order_row(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(outbox, "add_event", broken)
    resp = await ctx.client.post("/orders", json=VALID)
    assert resp.status == 500
    assert await ctx.orders() == []
    assert await ctx.outbox_rows() == []
    assert ctx.commits == []

    # The database is usable afterwards (the transaction and its lock were released).
    monkeypatch.undo()
    await ctx.create()
    assert len(await ctx.orders()) == 1 and len(await ctx.outbox_rows()) == 1


async def test_a_failing_pay_rolls_back_the_status_change(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    order_id = await ctx.create()

    async def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(outbox, "add_event", broken)
    resp = await ctx.client.post(f"/orders/{order_id}/pay")
    assert resp.status == 500
    assert [o[4] for o in await ctx.orders()] == ["CREATED"]
    assert [r["topic"] for r in await ctx.outbox_rows()] == [CREATED]
    assert len(ctx.commits) == 1
