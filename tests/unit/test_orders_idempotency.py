"""Idempotency-Key on the order service's writes (issue 25 item 2), on SQLite (the same
tests on PostgreSQL, which needs its server's binaries:
tests/integration/test_orders_idempotency_postgres.py): a repeat is answered from the
stored answer, never written twice; the key lives in the transaction of the effect
(rules: orders/idempotency.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from orders import idempotency, outbox
from orders.api import OrdersApi
from orders.db import Database, SqliteDatabase
from orders.metrics import OrdersMetrics
from harness.outbox_waits import wait_for
from streams.engine.testing import Clock

T0 = 1_700_000_000.0
VALID = {"user_id": "u-1", "items": [{"sku": "sku-1", "qty": 2}], "amount": "12.50"}
TTL = 3600.0


@dataclass
class Ctx:
    client: TestClient
    api: OrdersApi
    db: Database
    clock: Clock

    async def count(self, table: str) -> int:
        async with self.db.transaction() as tx:
            row = await tx.fetchone(f"SELECT COUNT(*) FROM {table}")
        assert row is not None
        return int(row[0])

    async def post(self, path: str, key: str | None, body: Any = None) -> tuple[int, Any, Any]:
        headers = {idempotency.HEADER: key} if key is not None else {}
        resp = await self.client.post(path, json=body, headers=headers)
        return resp.status, await resp.json(), resp.headers


@pytest.fixture
def new_db(tmp_path: Path) -> Any:
    """Make Database objects on one database (several = several processes)."""
    return lambda: SqliteDatabase(str(tmp_path / "orders.db"))


@asynccontextmanager
async def open_ctx(db: Database, clock: Clock) -> AsyncIterator[Ctx]:
    await db.setup()
    api = OrdersApi(db, OrdersMetrics(), clock=clock, idempotency_ttl=TTL)
    try:
        async with TestClient(TestServer(api.app())) as client:
            yield Ctx(client, api, db, clock)
    finally:
        await db.close()


@pytest.fixture
async def ctx(new_db: Any) -> AsyncIterator[Ctx]:
    db = new_db()
    await db.setup()
    async with db.transaction() as tx:
        for table in ("orders", "outbox", "idempotency_keys"):
            await tx.execute(f"DELETE FROM {table}")
    async with open_ctx(db, Clock(T0)) as c:
        yield c


async def test_a_repeated_create_returns_the_first_answer_and_writes_once(ctx: Ctx) -> None:
    first = await ctx.post("/orders", "k-1", VALID)
    again = await ctx.post("/orders", "k-1", VALID)
    assert first[0] == again[0] == 201
    assert again[1] == first[1] and first[1]["order_id"].startswith("o-")
    assert again[2][idempotency.REPLAYED_HEADER] == "true"
    assert idempotency.REPLAYED_HEADER not in first[2]
    assert await ctx.count("orders") == 1
    assert await ctx.count("outbox") == 1
    # Another key is another order.
    other = await ctx.post("/orders", "k-2", VALID)
    assert other[0] == 201 and other[1]["order_id"] != first[1]["order_id"]
    assert await ctx.count("orders") == 2


async def test_the_same_body_with_keys_in_another_order_is_the_same_request(ctx: Ctx) -> None:
    status, body, _ = await ctx.post("/orders", "k-1", VALID)
    reordered = {"amount": "12.50", "items": [{"qty": 2, "sku": "sku-1"}], "user_id": "u-1"}
    again = await ctx.post("/orders", '"k-1"', reordered)  # the draft's quoted form: the same key
    assert (again[0], again[1]) == (status, body)
    assert again[2][idempotency.REPLAYED_HEADER] == "true"


@pytest.mark.parametrize("action, status", [("pay", "PAID"), ("cancel", "CANCELLED")])
async def test_a_repeated_pay_or_cancel_returns_the_first_answer_and_writes_once(
        ctx: Ctx, action: str, status: str) -> None:
    order_id = (await ctx.post("/orders", None, VALID))[1]["order_id"]
    first = await ctx.post(f"/orders/{order_id}/{action}", "k-a")
    again = await ctx.post(f"/orders/{order_id}/{action}", "k-a")
    assert first[0] == again[0] == 202
    assert first[1] == again[1] == {"order_id": order_id, "status": status}
    assert again[2][idempotency.REPLAYED_HEADER] == "true"
    assert await ctx.count("outbox") == 2  # OrderCreated + one OrderPaid / OrderCancelled


async def test_the_same_key_with_another_request_is_422_and_writes_nothing(ctx: Ctx) -> None:
    order_id = (await ctx.post("/orders", "k-1", VALID))[1]["order_id"]
    status, body, _ = await ctx.post("/orders", "k-1", {**VALID, "amount": "13.00"})
    assert status == 422 and body["error"] == "idempotency key reused"
    status, body, _ = await ctx.post(f"/orders/{order_id}/pay", "k-1")  # another route
    assert status == 422
    paid = await ctx.post(f"/orders/{order_id}/pay", "k-p")
    assert paid[0] == 202
    status, body, _ = await ctx.post(f"/orders/{order_id}/cancel", "k-p")
    assert status == 422
    assert await ctx.count("orders") == 1
    assert await ctx.count("outbox") == 2


async def test_a_request_in_flight_under_the_key_is_409(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    real_add = outbox.add_event

    async def held(tx: Any, event: Any, **kw: Any) -> str:
        entered.set()
        await release.wait()
        return await real_add(tx, event, **kw)

    monkeypatch.setattr(outbox, "add_event", held)
    first = asyncio.ensure_future(ctx.post("/orders", "k-1", VALID))
    await asyncio.wait_for(entered.wait(), 10)
    status, body, headers = await ctx.post("/orders", "k-1", VALID)
    assert status == 409 and body["error"] == "request in flight" and headers["Retry-After"] == "1"
    release.set()
    created = await first
    assert created[0] == 201
    replay = await ctx.post("/orders", "k-1", VALID)
    assert replay[1] == created[1] and replay[2][idempotency.REPLAYED_HEADER] == "true"
    assert await ctx.count("orders") == 1


async def test_two_processes_with_the_same_key_at_once_create_one_order(
        ctx: Ctx, new_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second OrdersApi on the same database (its own in-flight set, its own
    connections) stands for a second process. PostgreSQL: the later transaction fails
    on the key's primary key and is rolled back, order row and all (409). SQLite: it
    waits for the write lock and is then a replay."""
    entered, release = asyncio.Event(), asyncio.Event()
    real_remember = idempotency.remember
    calls = 0

    async def first_one_held(*args: Any, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        await real_remember(*args, **kw)
        if calls == 1:  # the first has written its order and its key, uncommitted
            entered.set()
            await release.wait()

    monkeypatch.setattr(idempotency, "remember", first_one_held)
    async with open_ctx(new_db(), ctx.clock) as other:
        first = asyncio.ensure_future(ctx.post("/orders", "k-1", VALID))
        await asyncio.wait_for(entered.wait(), 10)
        second = asyncio.ensure_future(other.post("/orders", "k-1", VALID))
        if ctx.db.dialect == "postgresql":
            # The second has created its order and waits on the first's uncommitted key.
            await wait_for(lambda: lock_waiters(ctx.db), lambda n: n == 1, what="the second INSERT waiting", timeout=10)
        # (SQLite: the second waits for the write lock, wherever it is.)
        release.set()
        a, b = await first, await second
    assert a[0] == 201
    if ctx.db.dialect == "postgresql":
        assert b[0] == 409 and b[1]["error"] == "request in flight"
    else:
        assert (b[0], b[1]) == (201, a[1]) and b[2][idempotency.REPLAYED_HEADER] == "true"
    assert await ctx.count("orders") == 1
    assert await ctx.count("outbox") == 1
    replay = await ctx.post("/orders", "k-1", VALID)
    assert replay[1] == a[1]


async def lock_waiters(db: Database) -> int:
    async with db.transaction() as tx:
        row = await tx.fetchone("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    assert row is not None
    return int(row[0])


async def test_the_key_is_stored_in_the_transaction_of_the_effect(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while storing the key (after the order and outbox rows were written)
    leaves no order: a retry creates the order once."""
    real_remember = idempotency.remember

    async def broken(*args: Any, **kw: Any) -> None:
        raise RuntimeError("disk gone while storing the key")

    monkeypatch.setattr(idempotency, "remember", broken)
    resp = await ctx.client.post("/orders", json=VALID, headers={idempotency.HEADER: "k-1"})
    assert resp.status == 500
    assert await ctx.count("orders") == 0 and await ctx.count("outbox") == 0
    monkeypatch.setattr(idempotency, "remember", real_remember)
    status, body, headers = await ctx.post("/orders", "k-1", VALID)
    assert status == 201 and idempotency.REPLAYED_HEADER not in headers
    assert await ctx.count("orders") == 1


async def test_a_refused_request_is_not_stored(ctx: Ctx) -> None:
    status, _, _ = await ctx.post("/orders/o-later/pay", "k-1")
    assert status == 404
    assert await ctx.count("idempotency_keys") == 0
    order_id = (await ctx.post("/orders", None, VALID))[1]["order_id"]
    await ctx.post(f"/orders/{order_id}/cancel", None)
    status, body, _ = await ctx.post(f"/orders/{order_id}/pay", "k-2")
    assert status == 409 and await ctx.count("idempotency_keys") == 0


async def test_keys_expire_after_the_ttl_and_are_swept(ctx: Ctx) -> None:
    first = await ctx.post("/orders", "k-old", VALID)
    ctx.clock.now += TTL - 1
    assert (await ctx.post("/orders", "k-old", VALID))[1] == first[1]  # still kept
    ctx.clock.now += 2
    later = await ctx.post("/orders", "k-old", VALID)  # expired: a new request
    assert later[0] == 201 and later[1] != first[1] and idempotency.REPLAYED_HEADER not in later[2]
    assert await ctx.count("orders") == 2
    await ctx.post("/orders", "k-new", VALID)
    ctx.clock.now += TTL + idempotency.SWEEP_INTERVAL
    await ctx.post("/orders", "k-newest", VALID)  # its transaction sweeps the expired keys
    assert await ctx.count("idempotency_keys") == 1


@pytest.mark.parametrize("headers", [
    [("Idempotency-Key", "k" * 256)],
    [("Idempotency-Key", "")],
    [("Idempotency-Key", '""')],
    [("Idempotency-Key", "with space")],
    [("Idempotency-Key", '"unterminated')],
    [("Idempotency-Key", "k-1"), ("Idempotency-Key", "k-2")],
], ids=["256 chars", "empty", "empty quoted", "space", "bad quoting", "twice"])
async def test_a_bad_key_is_400_and_writes_nothing(ctx: Ctx, headers: list[tuple[str, str]]) -> None:
    resp = await ctx.client.post("/orders", json=VALID, headers=headers)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid idempotency key"
    assert "k" * 256 not in str(body)  # the key is not echoed
    order_id = (await ctx.post("/orders", None, VALID))[1]["order_id"]
    resp = await ctx.client.post(f"/orders/{order_id}/pay", headers=headers)
    assert resp.status == 400
    assert await ctx.count("outbox") == 1 and await ctx.count("idempotency_keys") == 0


async def test_the_longest_key_and_non_ascii_bytes(ctx: Ctx) -> None:
    longest = "K" * idempotency.MAX_KEY_LENGTH
    assert (await ctx.post("/orders", longest, VALID))[0] == 201
    resp = await ctx.client.post("/orders", json=VALID, headers={idempotency.HEADER: "clé".encode().decode("latin-1")})
    assert resp.status == 400
    assert await ctx.count("orders") == 1
