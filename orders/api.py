"""The order service's HTTP API (aiohttp).

Each write is one database transaction holding the order row and its outbox row;
the request never waits for Kafka. After the commit the relay is woken.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orders import outbox
from orders.db import Database, PostgresDatabase
from orders.metrics import OrdersMetrics
from orders.relay import NOTIFY_CHANNEL
from streams.events import OrderCancelled, OrderCreated, OrderItem, OrderPaid


class CreateOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1)
    items: tuple[OrderItem, ...] = Field(min_length=1)
    amount: Decimal = Field(ge=0)


ORDER_COLUMNS = "order_id, user_id, items, amount, status, created_at, updated_at"


def order_json(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "order_id": row[0], "user_id": row[1], "items": json.loads(row[2]), "amount": row[3],
        "status": row[4], "created_at": row[5], "updated_at": row[6],
    }


class OrdersApi:
    def __init__(
        self,
        db: Database,
        metrics: OrdersMetrics,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.on_commit = on_commit
        self.clock = clock
        self.notify_sql = f"NOTIFY {NOTIFY_CHANNEL}" if isinstance(db, PostgresDatabase) else None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        app.router.add_post("/orders", self.create)
        app.router.add_post("/orders/{order_id}/pay", self.pay)
        app.router.add_post("/orders/{order_id}/cancel", self.cancel)
        app.router.add_get("/orders/{order_id}", self.get)
        app.router.add_get("/outbox/stats", self.outbox_stats)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/health", self.health)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.metrics.requests.labels(route, str(exc.status)).inc()
            raise
        self.metrics.requests.labels(route, str(response.status)).inc()
        return response

    async def _event_committed(self, tx: Any) -> None:
        if self.notify_sql:
            await tx.execute(self.notify_sql)

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = CreateOrder.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"error": "invalid order", "detail": json.loads(exc.json())}, status=422)
        order_id = f"o-{uuid.uuid4().hex}"
        now = self.clock()
        event = OrderCreated(order_id=order_id, user_id=body.user_id, items=body.items,
                             amount=body.amount, occurred_at=_dt(now))
        items = json.dumps([i.model_dump() for i in body.items])
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?, ?, ?, ?, 'CREATED', ?, ?)",
                (order_id, body.user_id, items, str(body.amount), now, now),
            )
            await outbox.add_event(tx, event, now=now)
            await self._event_committed(tx)
        self.on_commit()
        return web.json_response({"order_id": order_id}, status=201)

    async def pay(self, request: web.Request) -> web.Response:
        return await self._transition(request, "PAID", allowed_from={"CREATED"}, done={"PAID"})

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._transition(request, "CANCELLED", allowed_from={"CREATED"}, done={"CANCELLED"})

    async def _transition(self, request: web.Request, target: str, *, allowed_from: set[str], done: set[str]) -> web.Response:
        order_id = request.match_info["order_id"]
        now = self.clock()
        lock = " FOR UPDATE" if isinstance(self.db, PostgresDatabase) else ""
        async with self.db.transaction() as tx:
            row = await tx.fetchone(f"SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ?{lock}", (order_id,))
            if row is None:
                return web.json_response({"error": "unknown order", "order_id": order_id}, status=404)
            status = row[4]
            if status in done:  # paying (or cancelling) twice is idempotent
                return web.json_response({"order_id": order_id, "status": status}, status=202)
            if status not in allowed_from:
                return web.json_response(
                    {"error": f"order is {status}", "order_id": order_id, "status": status}, status=409
                )
            event: OrderPaid | OrderCancelled
            if target == "PAID":
                event = OrderPaid(order_id=order_id, user_id=row[1], amount=Decimal(row[3]), occurred_at=_dt(now))
            else:
                event = OrderCancelled(order_id=order_id, reason="customer", occurred_at=_dt(now))
            await tx.execute("UPDATE orders SET status = ?, updated_at = ? WHERE order_id = ?",
                             (target, now, order_id))
            await outbox.add_event(tx, event, now=now)
            await self._event_committed(tx)
        self.on_commit()
        return web.json_response({"order_id": order_id, "status": target}, status=202)

    async def get(self, request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        async with self.db.transaction() as tx:
            row = await tx.fetchone(f"SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ?", (order_id,))
        if row is None:
            return web.json_response({"error": "unknown order", "order_id": order_id}, status=404)
        return web.json_response(order_json(row))

    async def outbox_stats(self, request: web.Request) -> web.Response:
        async with self.db.transaction() as tx:
            st = await outbox.stats(tx, now=self.clock())
        self.metrics.pending.set(st.pending)
        self.metrics.oldest_age.set(st.oldest_pending_age_seconds)
        return web.json_response(st.as_dict())

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def _dt(epoch: float) -> Any:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc)
