"""Worker HTTP routes: ``/metrics``, ``/health``, ``/orders/{order_id}``, ``/inventory/{sku}``.

The web surface is what the README lists, on the address it names:

- the server binds ``WEB_HOST`` (Faust binds ``web_bind``, default ``0.0.0.0``,
  whatever ``web_host`` says — it listened on every interface before);
- Faust's generic ``/table/…`` and ``/router/…`` views are off unless
  ``WEB_TABLE_VIEWS`` (they returned raw table values, an ``authorization`` header
  sent with a record included);
- with ``WEB_TOKEN`` set, every route except ``/health`` and ``/metrics`` needs
  ``Authorization: Bearer <token>`` (or the console's session cookie);
- ids in paths are validated (400); views return their documented fields only.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web as aioweb

from streams.console import register_console
from streams.events import ID_PATTERN
from tables.inventory import STOCK_TABLE
from tables.order_state import TABLE as ORDER_TABLE
from tables.order_state import public_view

if TYPE_CHECKING:
    from streams.wiring import Worker

_ID = re.compile(ID_PATTERN)
#: Routes anyone may read, with or without ``WEB_TOKEN``.
OPEN_ROUTES = ("/health", "/metrics")
SESSION_COOKIE = "order_streams_session"


def token_ok(request: Any, token: str) -> bool:
    """``Authorization: Bearer <token>`` or the console's session cookie carries ``token``."""
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else request.cookies.get(SESSION_COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def auth_middleware(token: str, open_paths: tuple[str, ...] = OPEN_ROUTES,
                    public_prefixes: tuple[str, ...] = ()) -> Any:
    @aioweb.middleware
    async def require_token(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        path = request.path.rstrip("/") or "/"
        if path in open_paths or any(path.startswith(p) for p in public_prefixes) or token_ok(request, token):
            return await handler(request)
        return aioweb.json_response({"error": "unauthorized: send Authorization: Bearer <WEB_TOKEN>"},
                                    status=401, headers={"WWW-Authenticate": "Bearer"})

    return require_token


def owned_partition(app: Any, table: Any, key: bytes) -> int | None:
    """The table partition of ``key`` if this worker holds it as an active, else None."""
    topic = table.changelog_topic.get_topic_name()
    tp = app.producer.key_partition(topic, key)
    actives = app.assignor.assigned_actives()
    return tp.partition if any(a.topic == topic and a.partition == tp.partition for a in actives) else None


def read_value(worker: "Worker", table_name: str, key: bytes) -> tuple[int, Any]:
    """(200, decoded value) | (404, None) | (503, None) when not owned here right now."""
    table = worker.tables[table_name]
    partition = owned_partition(worker.app, table, key)
    if partition is None:
        return 503, None
    [raw] = worker.store.read(table_name, partition, [key])
    return (200, orjson.loads(raw)) if raw is not None else (404, None)


def table_page(app: Any, worker: "Worker", path: str, table_name: str, match_info: str,
               *, name: str) -> Callable[[Any], Any]:
    """Registers a page at ``path`` keyed by ``match_info``: routed to the worker that
    holds the key's partition where this worker runs ``table_name`` (Faust's
    ``table_route``), served here as it is otherwise."""
    def register(handler: Any) -> Any:
        if table_name in worker.tables:
            handler = app.table_route(table=worker.tables[table_name], match_info=match_info)(handler)
        return app.page(path, name=name)(handler)

    return register


def register_web(app: Any, worker: "Worker") -> None:
    settings = worker.settings
    token = settings.web_token.get_secret_value()
    if token:
        def on_webserver_init(web: Any) -> None:
            if any(getattr(m, "__name__", "") == "require_token" for m in web.web_app.middlewares):
                return  # Faust initialises its web server twice
            web.web_app.middlewares.append(auth_middleware(token, public_prefixes=("/console/login",)))

        app.on_webserver_init = on_webserver_init

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(worker.metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        recovered = app.tables.recovery.completed.is_set()
        ready = recovered and not app.rebalancing
        problems = worker.health.problems(lag=worker.engine_lag(), stall_timeout=settings.stall_timeout,
                                          send_budget=settings.send_budget) if ready else []
        body = {
            "status": "ok" if ready and not problems else ("unhealthy" if problems else "starting"),
            "recovered": recovered,
            "rebalancing": bool(app.rebalancing),
            "problems": problems,
            **worker.recovery.summary(),
            "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives()),
        }
        return web.json(body, status=200 if ready and not problems else 503)

    def lookup(path: str, table_name: str, param: str, noun: str, label: str,
               project: Callable[[str, Any], Any]) -> None:
        """``GET path`` → ``project(id, value)`` of ``table_name``'s value for the id
        (``noun``: what the id names; ``label``: what the id is called)."""
        @table_page(app, worker, path, table_name, param, name=f"get_{param}")
        async def get(web: Any, request: Any, **match: str) -> Any:
            key = match[param]
            if not _ID.match(key):
                return web.json({"error": f"invalid {label}"}, status=400)
            status, value = read_value(worker, table_name, key.encode())
            if status == 404:
                return web.json({"error": f"unknown {noun}", param: key}, status=404)
            if status != 200:
                return web.json({"error": f"the {noun}'s partition is not served here right now"}, status=503)
            return web.json(project(key, value))

    if ORDER_TABLE in worker.tables:
        lookup("/orders/{order_id}", ORDER_TABLE, "order_id", "order", "order id", lambda _, state: public_view(state))
    if STOCK_TABLE in worker.tables:
        lookup("/inventory/{sku}", STOCK_TABLE, "sku", "SKU", "sku",
               lambda sku, stock: {"sku": sku, "available": stock["available"], "reserved": stock["reserved"]})

    register_console(app, worker)
