"""The order service's HTTP API (aiohttp).

Each write is one database transaction holding the order row and its outbox row;
the request never waits for Kafka. After the commit the relay is woken.

Input bounds: bodies are JSON only (415 otherwise) and at most
``ORDERS_MAX_BODY_BYTES`` (413); ids, item counts, quantities and amounts have the
bounds of the event models (:mod:`streams.events`), so what the API accepts the
consumers accept too (422 otherwise, with a readable ``detail``); an order whose event
would be larger than the relay may publish (``RELAY_MAX_REQUEST_BYTES``) is refused
with 422 before anything is written; a path ``order_id`` outside ``ID_PATTERN`` is 400.

Every route is declared once in :data:`ROUTES`, which both registers it and describes
it at ``GET /openapi.json`` (browsable at ``GET /docs``).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orders import idempotency, outbox
from orders.db import Database, PostgresDatabase, is_unique_violation
from orders.metrics import OrdersMetrics
from orders.openapi import Response, Route, docs_html, openapi
from orders.relay import NOTIFY_CHANNEL
from streams.events import (
    ID_MAX_LENGTH, ID_PATTERN, MAX_ITEMS, ORDERS_SOURCE, Amount, Event, Id, OrderCancelled, OrderCreated, OrderCreatedV2,
    OrderItem, OrderPaid, ce_headers,
)

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DEFAULT_IDEMPOTENCY_TTL = 24 * 3600.0
_ID = re.compile(ID_PATTERN)


# -- request and response bodies ---------------------------------------------------------


class CreateOrder(BaseModel):
    """A new order; the bounds are the ``OrderCreated`` event's."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": "u-7", "items": [{"sku": "s-1", "qty": 2}], "amount": "25.00"}]},
    )

    user_id: Id
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    amount: Amount


OrderStatus = Literal["CREATED", "PAID", "CANCELLED"]


class OrderAccepted(BaseModel):
    order_id: str


class StatusChange(BaseModel):
    """The order's status after the request (also when it was already there)."""

    order_id: str
    status: OrderStatus


class ItemView(BaseModel):
    sku: str
    qty: int


class OrderView(BaseModel):
    order_id: str
    user_id: str
    items: list[ItemView]
    amount: str = Field(description="decimal, as written at creation")
    status: OrderStatus
    created_at: float = Field(description="epoch seconds")
    updated_at: float = Field(description="epoch seconds")


class OutboxStatsView(BaseModel):
    pending: int = Field(description="rows not yet published")
    sent: int = Field(description="published rows kept for OUTBOX_RETENTION")
    failed: int = Field(description="pending rows whose last attempt failed (retried with backoff)")
    failed_terminal: int = Field(description="rows the relay gave up on (status failed: too large, invalid topic…)")
    oldest_pending_age_seconds: float


class Health(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    loc: str = Field(description="where in the request, e.g. items.3.qty (empty: the whole body)")
    msg: str


class ApiError(BaseModel):
    error: str
    detail: list[ErrorDetail] | None = None
    order_id: str | None = None
    status: str | None = None


def _error(http_status: int, error: str, *details: tuple[str, str], **fields: Any) -> web.Response:
    body = ApiError(error=error, detail=[ErrorDetail(loc=loc, msg=msg) for loc, msg in details] or None, **fields)
    return web.json_response(body.model_dump(exclude_none=True), status=http_status)


def _ok(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


# -- routes ---------------------------------------------------------------------------------

ORDER_ID_PARAM = {"order_id": {"type": "string", "pattern": ID_PATTERN, "maxLength": ID_MAX_LENGTH}}
BAD_ID = Response("order_id does not match ID_PATTERN", ApiError)
UNKNOWN = Response("unknown order", ApiError)

IDEMPOTENCY_KEY = {idempotency.HEADER: (
    "Optional. A repeat with the same key and the same request is answered with the first answer "
    f"(header {idempotency.REPLAYED_HEADER}: true) and writes nothing; the same key with another request is 422; "
    "while a request under the key is in flight, 409. Keys are kept IDEMPOTENCY_TTL seconds (default 24 h). "
    "Only 2xx answers are stored.",
    {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH,
     "pattern": r'^([\x21\x23-\x5b\x5d-\x7e]+|"([\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])+")$'},
)}
REPLAYED = {idempotency.REPLAYED_HEADER: (
    "true when this is the stored answer of an earlier request with the same Idempotency-Key",
    {"type": "string", "enum": ["true"]},
)}
BAD_KEY = Response("Idempotency-Key malformed (1-255 printable ASCII characters) or sent twice", ApiError)
KEY_REUSED = "Idempotency-Key already used for another request"
IN_FLIGHT = "a request with this Idempotency-Key is still in flight (Retry-After)"

ROUTES: tuple[Route, ...] = (
    Route("POST", "/orders", "create", "Create an order", request=CreateOrder, tags=("orders",),
          description="Writes the order and its OrderCreated outbox row in one transaction.",
          header_params=IDEMPOTENCY_KEY,
          responses={201: Response("created (or, with the replay header, created before under this key)",
                                   OrderAccepted, headers=REPLAYED),
                     400: BAD_KEY,
                     409: Response(IN_FLIGHT, ApiError),
                     413: Response("body larger than ORDERS_MAX_BODY_BYTES", ApiError),
                     415: Response("body not sent as application/json", ApiError),
                     422: Response("invalid order, its event larger than the relay may publish, or "
                                   + KEY_REUSED, ApiError)}),
    Route("POST", "/orders/{order_id}/pay", "pay", "Pay an order", tags=("orders",), path_params=ORDER_ID_PARAM,
          description="Writes OrderPaid through the outbox. Paying twice is idempotent.",
          header_params=IDEMPOTENCY_KEY,
          responses={202: Response("paid (now or before)", StatusChange, headers=REPLAYED),
                     400: Response("order_id does not match ID_PATTERN, or Idempotency-Key malformed", ApiError),
                     404: UNKNOWN,
                     409: Response("the order is cancelled, or " + IN_FLIGHT, ApiError),
                     422: Response(KEY_REUSED, ApiError)}),
    Route("POST", "/orders/{order_id}/cancel", "cancel", "Cancel an unpaid order", tags=("orders",),
          path_params=ORDER_ID_PARAM, description="Writes OrderCancelled through the outbox; idempotent.",
          header_params=IDEMPOTENCY_KEY,
          responses={202: Response("cancelled (now or before)", StatusChange, headers=REPLAYED),
                     400: Response("order_id does not match ID_PATTERN, or Idempotency-Key malformed", ApiError),
                     404: UNKNOWN,
                     409: Response("the order is paid, or " + IN_FLIGHT, ApiError),
                     422: Response(KEY_REUSED, ApiError)}),
    Route("GET", "/orders/{order_id}", "get", "The order row", tags=("orders",), path_params=ORDER_ID_PARAM,
          responses={200: Response("the order", OrderView), 400: BAD_ID, 404: UNKNOWN}),
    Route("GET", "/outbox/stats", "outbox_stats", "Outbox counts", tags=("operations",),
          responses={200: Response("counts by state and the oldest pending row's age", OutboxStatsView)}),
    Route("GET", "/metrics", "prometheus", "Prometheus metrics", tags=("operations",),
          responses={200: Response("Prometheus text format", media_type="text/plain")}),
    Route("GET", "/health", "health", "Liveness", tags=("operations",),
          responses={200: Response("the service answers", Health)}),
    Route("GET", "/openapi.json", "openapi_json", "This description (OpenAPI 3.1)", tags=("operations",),
          responses={200: Response("OpenAPI document", media_type="application/vnd.oai.openapi+json")}),
    Route("GET", "/docs", "docs", "This description as a web page", tags=("operations",),
          responses={200: Response("HTML", media_type="text/html")}),
)


ORDER_COLUMNS = "order_id, user_id, items, amount, status, created_at, updated_at"


def order_json(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "order_id": row[0], "user_id": row[1], "items": json.loads(row[2]), "amount": row[3],
        "status": row[4], "created_at": row[5], "updated_at": row[6],
    }


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json"))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("order-streams")
    except PackageNotFoundError:
        return "0.0.0"


class OrdersApi:
    def __init__(
        self,
        db: Database,
        metrics: OrdersMetrics,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        order_events_version: int = 1,
        currency: str = "EUR",
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.on_commit = on_commit
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.max_event_bytes = max_event_bytes
        self.idempotency_ttl = idempotency_ttl
        #: ORDER_EVENTS_VERSION: which OrderCreated (and so which topic) the API writes
        self.order_events_version = order_events_version
        self.currency = currency
        #: Idempotency-Keys whose request this process is executing (409 for a repeat)
        self._in_flight: set[str] = set()
        self._swept_at = float("-inf")
        self.notify_sql = f"NOTIFY {NOTIFY_CHANNEL}" if isinstance(db, PostgresDatabase) else None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count], client_max_size=self.max_body_bytes)
        for route in ROUTES:
            app.router.add_route(route.method, route.path, getattr(self, route.handler))
        return app

    @cached_property
    def spec(self) -> dict[str, Any]:
        return openapi(ROUTES, title="order-streams order service", version=_version(),
                       description="Orders, and their events through the transactional outbox.")

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
            key = idempotency.parse_key(request.headers.getall(idempotency.HEADER, []))
        except idempotency.BadKey as exc:
            return _error(400, "invalid idempotency key", ("header", str(exc)))
        if not _is_json(request.content_type):
            return _error(415, "unsupported media type",
                          ("content-type", f"send the body as application/json, not {request.content_type}"))
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "body too large", ("", f"at most {self.max_body_bytes} bytes (ORDERS_MAX_BODY_BYTES)"))
        try:
            body = CreateOrder.model_validate_json(raw)
        except ValidationError as exc:
            return _error(422, "invalid order", *_details(exc))
        order_id = f"o-{uuid.uuid4().hex}"
        now = self.clock()
        event = self._order_created(order_id, body, now)
        headers, payload = event_headers(event), event.to_bytes()  # once: checked, then written
        if (refused := self._too_large(event, headers, payload)) is not None:
            return refused
        items = json.dumps([i.model_dump() for i in body.items])

        async def effect(tx: Any) -> tuple[web.Response, bool]:
            await tx.execute(
                f"INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?, ?, ?, ?, 'CREATED', ?, ?)",
                (order_id, body.user_id, items, str(body.amount), now, now),
            )
            await outbox.add_event(tx, event, now=now, headers=headers, payload=payload)
            await self._event_committed(tx)
            return _ok(OrderAccepted(order_id=order_id), status=201), True

        fp = idempotency.fingerprint("POST", "/orders", body.model_dump_json())
        return await self._write(key, fp, now, effect)

    def _order_created(self, order_id: str, body: CreateOrder, now: float) -> OrderCreated | OrderCreatedV2:
        """The event of a new order in the version ``ORDER_EVENTS_VERSION`` names (v2: with
        ``DEFAULT_CURRENCY``; the API takes no unit prices, so its items carry none)."""
        if self.order_events_version == 2:
            return OrderCreatedV2(order_id=order_id, user_id=body.user_id, amount=body.amount,
                                  items=tuple({"sku": i.sku, "qty": i.qty} for i in body.items),  # type: ignore[misc]
                                  currency=self.currency, occurred_at=_dt(now))
        return OrderCreated(order_id=order_id, user_id=body.user_id, items=body.items,
                            amount=body.amount, occurred_at=_dt(now))

    async def _write(self, key: str | None, fp: str, now: float,
                     effect: Callable[[Any], Awaitable[tuple[web.Response, bool]]]) -> web.Response:
        """Run ``effect`` in one transaction (it returns its answer and whether it wrote
        an event); with an ``Idempotency-Key``, store a 2xx answer in that same
        transaction, or answer from what is stored (rules: :mod:`orders.idempotency`)."""
        if key is not None:
            if key in self._in_flight:
                return _in_flight()
            self._in_flight.add(key)
        wrote = False
        try:
            async with self.db.transaction() as tx:
                stored = await idempotency.lookup(tx, key) if key is not None else None
                if stored is not None and stored.live(now=now, ttl=self.idempotency_ttl):
                    if stored.fingerprint != fp:
                        return _error(422, "idempotency key reused",
                                      ("header", f"this {idempotency.HEADER} was used for another request"))
                    return web.Response(text=stored.body, status=stored.status, content_type="application/json",
                                        headers={idempotency.REPLAYED_HEADER: "true"})
                response, wrote = await effect(tx)
                if key is not None and 200 <= response.status < 300:
                    assert isinstance(response.text, str)
                    await idempotency.remember(tx, key, fp, response.status, response.text,
                                               now=now, replace=stored is not None)
                if now - self._swept_at >= idempotency.SWEEP_INTERVAL:
                    self._swept_at = now
                    await idempotency.sweep(tx, now=now, ttl=self.idempotency_ttl)
        except Exception as exc:
            # PostgreSQL: another process committed a request under this key while
            # ours ran; our transaction (effect included) is rolled back.
            if key is not None and is_unique_violation(exc):
                return _in_flight()
            raise
        finally:
            if key is not None:
                self._in_flight.discard(key)
        if wrote:
            self.on_commit()
        return response

    def _too_large(self, event: Event, headers: list[tuple[str, str]], payload: bytes) -> web.Response | None:
        """422 when the relay could never publish ``event`` (checked before anything is written)."""
        try:
            outbox.check_size(event, self.max_event_bytes, headers, payload=payload)
        except outbox.EventTooLarge as exc:
            return _error(422, "order too large", ("", str(exc)))
        return None

    async def pay(self, request: web.Request) -> web.Response:
        return await self._transition(request, "PAID", allowed_from={"CREATED"}, done={"PAID"})

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._transition(request, "CANCELLED", allowed_from={"CREATED"}, done={"CANCELLED"})

    async def _transition(self, request: web.Request, target: str, *, allowed_from: set[str], done: set[str]) -> web.Response:
        try:
            key = idempotency.parse_key(request.headers.getall(idempotency.HEADER, []))
        except idempotency.BadKey as exc:
            return _error(400, "invalid idempotency key", ("header", str(exc)))
        order_id = request.match_info["order_id"]
        if not _ID.fullmatch(order_id):
            return _bad_id()
        now = self.clock()
        lock = " FOR UPDATE" if isinstance(self.db, PostgresDatabase) else ""

        async def effect(tx: Any) -> tuple[web.Response, bool]:
            row = await tx.fetchone(f"SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ?{lock}", (order_id,))
            if row is None:
                return _error(404, "unknown order", order_id=order_id), False
            status = row[4]
            if status in done:  # paying (or cancelling) twice is idempotent
                return _ok(StatusChange(order_id=order_id, status=status), status=202), False
            if status not in allowed_from:
                return _error(409, f"order is {status}", order_id=order_id, status=status), False
            event: OrderPaid | OrderCancelled
            if target == "PAID":
                event = OrderPaid(order_id=order_id, user_id=row[1], amount=Decimal(row[3]), occurred_at=_dt(now))
            else:
                event = OrderCancelled(order_id=order_id, reason="customer", occurred_at=_dt(now))
            headers, payload = event_headers(event), event.to_bytes()
            if (refused := self._too_large(event, headers, payload)) is not None:
                return refused, False
            await tx.execute("UPDATE orders SET status = ?, updated_at = ? WHERE order_id = ?",
                             (target, now, order_id))
            await outbox.add_event(tx, event, now=now, headers=headers, payload=payload)
            await self._event_committed(tx)
            return _ok(StatusChange(order_id=order_id, status=target), status=202), True

        path = f"/orders/{order_id}/{'pay' if target == 'PAID' else 'cancel'}"
        return await self._write(key, idempotency.fingerprint("POST", path), now, effect)

    async def get(self, request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        if not _ID.fullmatch(order_id):
            return _bad_id()
        async with self.db.transaction() as tx:
            row = await tx.fetchone(f"SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ?", (order_id,))
        if row is None:
            return _error(404, "unknown order", order_id=order_id)
        return _ok(OrderView.model_validate(order_json(row)))

    async def outbox_stats(self, request: web.Request) -> web.Response:
        async with self.db.transaction() as tx:
            st = await outbox.stats(tx, now=self.clock())
        # Fresh numbers: set the gauges too (only where this process runs the relay).
        self.metrics.set_outbox(st.pending, st.oldest_pending_age_seconds, st.failed_terminal)
        return _ok(OutboxStatsView.model_validate(st.as_dict()))

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain")

    async def health(self, request: web.Request) -> web.Response:
        return _ok(Health(status="ok"))

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.spec)

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(text=docs_html(self.spec), content_type="text/html")


def event_headers(event: Event) -> list[tuple[str, str]]:
    """The headers of the event's outbox row: the CloudEvents binding's (binary mode)."""
    return [(k, v.decode()) for k, v in ce_headers(event, ORDERS_SOURCE)]


def _in_flight() -> web.Response:
    response = _error(409, "request in flight",
                      ("header", f"a request with this {idempotency.HEADER} is still being processed; retry later"))
    response.headers["Retry-After"] = "1"
    return response


def _bad_id() -> web.Response:
    return _error(400, "invalid order id",
                  ("order_id", f"1-{ID_MAX_LENGTH} characters from A-Z a-z 0-9 . _ : - (starting with a letter or digit)"))


def _details(exc: ValidationError) -> list[tuple[str, str]]:
    """Pydantic's errors as (where, what) — without the input, which may be large."""
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors(include_url=False, include_input=False)]


def _dt(epoch: float) -> Any:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc)
