"""orders.api.OrdersApi over HTTP (aiohttp test server) on SQLite: every write is one
transaction holding the order row and its outbox row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from streams.events import MAX_AMOUNT, MAX_ITEMS, MAX_QTY, OrderCancelled, OrderCreated, OrderPaid
from streams.engine.testing import Clock

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


@asynccontextmanager
async def open_ctx(path: Path, metrics: OrdersMetrics | None = None, **limits: int) -> AsyncIterator[Ctx]:
    db = SqliteDatabase(str(path))
    await db.setup()
    commits: list[int] = []
    clock = Clock(T0)
    api = OrdersApi(db, metrics or OrdersMetrics(), on_commit=lambda: commits.append(1), clock=clock, **limits)
    try:
        async with TestClient(TestServer(api.app())) as client:
            yield Ctx(client, db, api, clock, commits)
    finally:
        await db.close()


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Ctx]:
    async with open_ctx(tmp_path / "orders.db") as c:
        yield c


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
        # Sent as application/json: JSON bodies only, a text/plain body is 415 (below).
        pytest.param("not json", id="not-json"),
    ],
)
async def test_an_invalid_order_is_rejected_with_422_and_writes_nothing(ctx: Ctx, body: Any) -> None:
    if isinstance(body, str):
        resp = await ctx.client.post("/orders", data=body, headers={"Content-Type": "application/json"})
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
    assert await resp.json() == {"pending": 0, "sent": 0, "failed": 0, "failed_terminal": 0,
                                 "oldest_pending_age_seconds": 0.0}

    order_id = await ctx.create()
    ctx.clock.now = T0 + 2
    await ctx.client.post(f"/orders/{order_id}/pay")
    ctx.clock.now = T0 + 7.5
    resp = await ctx.client.get("/outbox/stats")
    assert resp.status == 200
    assert await resp.json() == {"pending": 2, "sent": 0, "failed": 0, "failed_terminal": 0,
                                 "oldest_pending_age_seconds": 7.5}
    assert ctx.api.metrics.registry.get_sample_value("outbox_pending_rows") == 2
    assert ctx.api.metrics.registry.get_sample_value("outbox_oldest_pending_age_seconds") == 7.5


async def test_health_and_metrics(ctx: Ctx) -> None:
    await ctx.create()
    assert await (await ctx.client.get("/health")).json() == {"status": "ok"}
    text = await (await ctx.client.get("/metrics")).text()
    assert 'orders_http_requests_total{route="/orders",status="201"} 1.0' in text


async def test_an_api_only_process_exports_no_outbox_gauges(tmp_path: Path) -> None:
    """RELAY_ENABLED=false: the gauges belong to the process running the relay (which
    refreshes them on a timer); this one would only ever show stale values."""
    async with open_ctx(tmp_path / "o.db", metrics=OrdersMetrics(api=True, relay=False)) as api_only:
        await api_only.create()
        stats = await (await api_only.client.get("/outbox/stats")).json()
        assert stats["pending"] == 1
        text = await (await api_only.client.get("/metrics")).text()
    assert "outbox_" not in text
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


# -- input bounds --------------------------------------------------------------------------


async def assert_nothing_written(ctx: Ctx) -> None:
    assert await ctx.orders() == []
    assert await ctx.outbox_rows() == []
    assert ctx.commits == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_body_that_is_not_json_is_415(ctx: Ctx, content_type: str | None) -> None:
    """JSON bodies only: ``curl -d`` (form-urlencoded) or a text body is refused, not guessed at."""
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await ctx.client.post("/orders", data=json.dumps(VALID).encode(), headers=headers,
                                 skip_auto_headers=["Content-Type"])
    assert resp.status == 415
    body = await resp.json()
    assert body["error"] == "unsupported media type"
    assert "application/json" in body["detail"][0]["msg"]
    await assert_nothing_written(ctx)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json"])
async def test_json_content_types_with_parameters_or_suffix_are_accepted(ctx: Ctx, content_type: str) -> None:
    resp = await ctx.client.post("/orders", data=json.dumps(VALID), headers={"Content-Type": content_type})
    assert resp.status == 201, await resp.text()


async def test_a_one_mib_body_is_413_and_writes_nothing(ctx: Ctx) -> None:
    """The issue: a body of exactly 1 MiB was accepted (its OrderCreated was 1,048,733
    bytes, more than the relay's producer sends). The default cap is 64 KiB."""
    filler = "x" * (1024 * 1024 - len(json.dumps({**VALID, "user_id": ""})))
    body = json.dumps({**VALID, "user_id": filler}).encode()
    assert len(body) == 1024 * 1024
    resp = await ctx.client.post("/orders", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    answer = await resp.json()
    assert answer["error"] == "body too large" and "65536" in answer["detail"][0]["msg"]
    await assert_nothing_written(ctx)


async def test_the_body_cap_is_a_setting(tmp_path: Path) -> None:
    async with open_ctx(tmp_path / "o.db", max_body_bytes=2048) as small:
        body = json.dumps({**VALID, "items": [{"sku": f"s-{i}", "qty": 1} for i in range(90)]})
        assert 2048 < len(body) < 64 * 1024
        resp = await small.client.post("/orders", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 413
        assert (await small.client.post("/orders", json=VALID)).status == 201


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        pytest.param({**VALID, "items": [{"sku": f"s-{i}", "qty": 1} for i in range(1000)]}, "items", "100",
                     id="1000-skus"),
        pytest.param({**VALID, "items": [{"sku": "s", "qty": MAX_QTY + 1}]}, "items.0.qty", "10000", id="qty-too-big"),
        pytest.param({**VALID, "items": [{"sku": "s", "qty": 1.5}]}, "items.0.qty", "integer", id="qty-fraction"),
        pytest.param({**VALID, "amount": str(MAX_AMOUNT + 1)}, "amount", "1000000000", id="amount-too-big"),
        pytest.param({**VALID, "amount": "1.00001"}, "amount", "4 decimal places", id="amount-5-decimals"),
        pytest.param({**VALID, "amount": "NaN"}, "amount", "", id="amount-nan"),
        pytest.param({**VALID, "amount": "Infinity"}, "amount", "", id="amount-infinity"),
        pytest.param({**VALID, "user_id": "u" * 129}, "user_id", "128", id="user-id-too-long"),
        pytest.param({**VALID, "user_id": "u 7"}, "user_id", "pattern", id="user-id-space"),
        pytest.param({**VALID, "user_id": "u-7\n"}, "user_id", "pattern", id="user-id-newline"),
        pytest.param({**VALID, "items": [{"sku": "s/1", "qty": 1}]}, "items.0.sku", "pattern", id="sku-slash"),
        pytest.param({**VALID, "items": [{"sku": "s" * 129, "qty": 1}]}, "items.0.sku", "128", id="sku-too-long"),
        pytest.param([VALID], "", "object", id="array-body"),
    ],
)
async def test_out_of_bounds_orders_are_422_with_a_readable_detail(ctx: Ctx, body: Any, loc: str, words: str) -> None:
    resp = await ctx.client.post("/orders", json=body)
    assert resp.status == 422
    answer = await resp.json()
    assert answer["error"] == "invalid order"
    assert loc in [d["loc"] for d in answer["detail"]], answer
    msgs = " ".join(d["msg"] for d in answer["detail"] if d["loc"] == loc)
    assert words in msgs, msgs
    # Readable: where and what, never the (possibly huge) input echoed back.
    assert all(set(d) == {"loc", "msg"} for d in answer["detail"])
    assert len(await resp.read()) < 2048
    await assert_nothing_written(ctx)


async def test_orders_at_every_bound_are_accepted(ctx: Ctx) -> None:
    body = {"user_id": "u" * 128, "amount": str(MAX_AMOUNT),
            "items": [{"sku": f"{i:03d}" + "s" * 125, "qty": MAX_QTY} for i in range(MAX_ITEMS)]}
    order_id = await ctx.create(body)
    [row] = await ctx.outbox_rows()
    event = OrderCreated.model_validate_json(row["payload"])
    assert event.order_id == order_id and len(event.items) == MAX_ITEMS and event.amount == MAX_AMOUNT
    assert await ctx.create({**VALID, "amount": "0.0001"})


BAD_PATH_IDS = ["o%20x", "o-1%0A", "." + "x", "x" * 129, "o%2Fx", "%C3%A9t%C3%A9"]


@pytest.mark.parametrize("order_id", BAD_PATH_IDS)
@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("POST", "/pay"), ("POST", "/cancel")])
async def test_a_path_order_id_outside_the_id_pattern_is_400(ctx: Ctx, method: str, suffix: str, order_id: str) -> None:
    await ctx.create()
    resp = await ctx.client.request(method, f"/orders/{order_id}{suffix}")
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "invalid order id" and answer["detail"][0]["loc"] == "order_id"
    assert [r["topic"] for r in await ctx.outbox_rows()] == [CREATED]
    assert len(ctx.commits) == 1


async def test_an_event_larger_than_the_relay_may_publish_is_422_before_anything_is_written(tmp_path: Path) -> None:
    """RELAY_MAX_REQUEST_BYTES: what the API accepts, the relay can publish."""
    async with open_ctx(tmp_path / "o.db", max_event_bytes=4096) as small:
        big = {**VALID, "items": [{"sku": f"{i:02d}" + "s" * 100, "qty": 1} for i in range(40)]}
        resp = await small.client.post("/orders", json=big)
        assert resp.status == 422
        answer = await resp.json()
        assert answer["error"] == "order too large"
        assert "4096" in answer["detail"][0]["msg"] and "RELAY_MAX_REQUEST_BYTES" in answer["detail"][0]["msg"]
        await assert_nothing_written(small)
        assert (await small.client.post("/orders", json=VALID)).status == 201


async def test_the_largest_accepted_event_passes_the_producers_own_size_check(tmp_path: Path) -> None:
    """The API's estimate is aiokafka's ``max_request_size`` check plus a margin: grow an
    order until the API refuses it; the last accepted one is accepted by the producer."""
    from aiokafka import AIOKafkaProducer

    limit = 8192
    async with open_ctx(tmp_path / "o.db", max_event_bytes=limit) as small:
        accepted = None
        for n in range(1, MAX_ITEMS + 1):
            body = {**VALID, "items": [{"sku": f"{i:03d}" + "s" * 60, "qty": 1} for i in range(n)]}
            resp = await small.client.post("/orders", json=body)
            if resp.status != 201:
                assert resp.status == 422
                break
            accepted = n
        assert accepted is not None and accepted < MAX_ITEMS
        row = (await small.outbox_rows())[-1]
        assert limit - 1024 < len(row["payload"]) < limit
    producer = AIOKafkaProducer(max_request_size=limit)
    # raises MessageSizeTooLargeError when the record does not fit
    producer._serialize(row["key"], row["payload"], [("event_id", row["id"].encode())])
    await producer.stop()
