"""Worker HTTP routes: ``/metrics``, ``/health``, ``/orders/{order_id}``, ``/inventory/{sku}``, ``/asyncapi.json``.

The web surface is what the README lists, on the address it names:

- the server binds ``WEB_HOST`` (Faust binds ``web_bind``, default ``0.0.0.0``,
  whatever ``web_host`` says — it listened on every interface before);
- Faust's generic ``/table/…`` and ``/router/…`` views are off unless
  ``WEB_TABLE_VIEWS`` (they returned raw table values, an ``authorization`` header
  sent with a record included);
- with ``WEB_TOKEN`` set, every route except ``/health`` and ``/metrics`` needs
  ``Authorization: Bearer <token>`` (or the console's session cookie: :mod:`streams.http.sessions`);
- ids in paths are validated (400); views return their documented fields only.

The console's routes are added next to these by the composition root
(:mod:`streams.assembly`), not from here: the console uses this package's sessions and
table lookups, so this package never imports the console.

Without ``WEB_TOKEN`` (:func:`host_middleware`) a request must name this worker in
its ``Host`` header — ``127.0.0.1``, ``localhost``, ``::1``, ``WEB_HOST``, the host of
``CANONICAL_URL``, this machine's name and address when bound to every interface,
or one of ``WEB_ALLOWED_HOSTS`` — else 421: a page of another site that rebinds its
DNS name to this worker's address sends its own name as ``Host`` and is refused.
``/health`` and ``/metrics`` answer any ``Host`` (they are open with a token too).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web as aioweb
from aiohttp.web_runner import BaseSite, TCPSite

from streams.events import ID_PATTERN
from streams.http.lookup import read_value, table_page
from streams.http.sessions import bad_encoding, token_ok
from streams.logs import add_secrets
from tables.inventory import STOCK_TABLE
from tables.order_state import TABLE as ORDER_TABLE
from tables.order_state import public_view

if TYPE_CHECKING:
    from streams.worker import Worker

log = logging.getLogger(__name__)
_ID = re.compile(ID_PATTERN)
#: Routes anyone may read, with or without ``WEB_TOKEN``.
OPEN_ROUTES = ("/health", "/metrics")


def auth_middleware(token: str, open_paths: tuple[str, ...] = OPEN_ROUTES,
                    public_prefixes: tuple[str, ...] = ()) -> Any:
    @aioweb.middleware
    async def require_token(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        refused = bad_encoding(request)
        if refused is not None:
            return refused
        path = request.path.rstrip("/") or "/"
        if path in open_paths or any(path.startswith(p) for p in public_prefixes) or token_ok(request, token):
            return await handler(request)
        return aioweb.json_response({"error": "unauthorized: send Authorization: Bearer <WEB_TOKEN>"},
                                    status=401, headers={"WWW-Authenticate": "Bearer"})

    return require_token


def host_name(host: str) -> str:
    """``Host`` header → the lower-cased name without port (``[::1]:6066`` → ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def own_hosts(settings: Any) -> frozenset[str]:
    """The names a request may give in ``Host`` when there is no ``WEB_TOKEN``."""
    from urllib.parse import urlsplit

    names = {"127.0.0.1", "localhost", "::1", settings.web_host}
    if settings.canonical_url:
        names.add(urlsplit(settings.canonical_url).hostname or "")
    if settings.web_host in ("0.0.0.0", "::"):
        import socket

        try:
            names.add(socket.gethostname())
            names.add(socket.gethostbyname(socket.gethostname()))
        except OSError:
            pass
    names.update(getattr(settings, "web_allowed_hosts", ()))
    return frozenset(host_name(n) for n in names if n)


def host_middleware(allowed: frozenset[str], open_paths: tuple[str, ...] = OPEN_ROUTES) -> Any:
    """Without ``WEB_TOKEN``: refuse (421) a request whose ``Host`` is not one of
    ``allowed`` — what a DNS-rebinding page sends (see the module's docstring)."""
    @aioweb.middleware
    async def require_own_host(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        refused = bad_encoding(request)
        if refused is not None:
            return refused
        path = request.path.rstrip("/") or "/"
        if path in open_paths or host_name(request.headers.get("Host", "")) in allowed:
            return await handler(request)
        return aioweb.json_response({"error": "misdirected request: this worker does not serve that Host "
                                     "(add it to WEB_ALLOWED_HOSTS, or set WEB_TOKEN)"}, status=421)

    return require_own_host


# ---------------------------------------------------------------------------------------
# The server itself: timeouts and a connection cap
#
# Faust starts aiohttp with its defaults: a connection may sit idle, or half-way through
# a request, for an hour (aiohttp 3.14's keep-alive timeout is 3,630 s), and there is no
# cap on connections, so a flood used every file descriptor of the process — /health
# timed out and the SMS gateway call failed with "Too many open files". Rules:
#
# - a connection gets ``WEB_KEEPALIVE_TIMEOUT`` to send a whole request head, when it
#   opens and after each answer (aiohttp's keep-alive timer, which it arms at both);
# - a request gets ``WEB_BODY_TIMEOUT`` to send its body (:func:`body_timeout_middleware`);
# - at most :func:`connection_cap` connections are open: ``WEB_MAX_CONNECTIONS``, never
#   more than half the process's file limit (the rest is for outgoing calls, Kafka and
#   the stores). A connection beyond the cap closes the one that has been quiet longest
#   (:class:`ConnectionGuard`), so a flood of idle connections cannot keep ``/health`` out;
# - the event loop's accept errors are logged once per interval
#   (:class:`streams.logs.RateLimitAcceptErrors`).
#
# Private names this relies on (aiohttp 3.14.5, faust-streaming 0.15.3; checked by
# tests/unit/test_web_server_limits.py): Faust's ``Web._runner`` (its AppRunner) and
# ``Web._transport_handlers`` (site factories by scheme); aiohttp's ``BaseRunner._kwargs``
# (the request handler's arguments) and the ``TCPSite`` attributes its ``start`` reads.


def connection_cap(setting: int, file_limit: int | None = None) -> int:
    """``setting``, at most half the soft file limit (never below 16)."""
    if file_limit is None:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        file_limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(16, min(setting, file_limit // 2))


class ConnectionGuard:
    """Open connections, least recently active first; beyond ``cap`` the quietest is closed."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: OrderedDict[Any, None] = OrderedDict()
        self.evicted = 0
        self._last_log = 0.0

    def opened(self, conn: Any) -> None:
        self.open[conn] = None
        over = 0
        while len(self.open) > self.cap:
            oldest = next(iter(self.open))
            if oldest is conn:
                break
            del self.open[oldest]
            oldest.close()
            over += 1
        if over:
            self.evicted += over
            now = time.monotonic()
            if now - self._last_log >= 60:
                self._last_log = now
                log.warning("web server at its connection cap (%d): closed the quietest connections "
                            "(%d so far)", self.cap, self.evicted)

    def active(self, conn: Any) -> None:
        if conn in self.open:
            self.open.move_to_end(conn)

    def closed(self, conn: Any) -> None:
        self.open.pop(conn, None)


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's request handler for one connection, counted by a :class:`ConnectionGuard`."""

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self.inner, self.guard = inner, guard
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.inner.connection_made(transport)
        self.guard.opened(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.guard.active(self)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.closed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class GuardedSite(TCPSite):
    """aiohttp's TCP site with every connection passed through a :class:`ConnectionGuard`."""

    def __init__(self, runner: Any, host: str | None, port: int | None, *, guard: ConnectionGuard,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        guard = self.guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GuardedProtocol(server(), guard), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)


def body_timeout_middleware(seconds: float) -> Any:
    """A request that has a body must send all of it within ``seconds`` (else 408)."""
    @aioweb.middleware
    async def body_timeout(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        if request.body_exists:
            try:
                await asyncio.wait_for(request.read(), seconds)
            except asyncio.TimeoutError:
                return aioweb.json_response({"error": f"request body not received in {seconds:g} s"},
                                            status=408, headers={"Connection": "close"})
        return await handler(request)

    return body_timeout


def guard_server(web: Any, settings: Any) -> ConnectionGuard:
    """Applies the rules above to Faust's web server ``web`` (before it starts)."""
    guard = ConnectionGuard(connection_cap(settings.web_max_connections))
    # lingering: how long aiohttp keeps reading an unread body after answering (10 s)
    web._runner._kwargs.update(keepalive_timeout=settings.web_keepalive_timeout, lingering_time=1.0)
    conf = web.app.conf
    web._transport_handlers["tcp"] = lambda: GuardedSite(web._runner, conf.web_bind, conf.web_port,
                                                         ssl_context=conf.web_ssl_context, guard=guard)
    return guard


def web_connection_metrics(registry: Any, guards: list[ConnectionGuard]) -> None:
    """``web_connections_open`` and ``web_connections_evicted_total`` (closed at the cap)."""
    from prometheus_client import Gauge
    from prometheus_client.core import CounterMetricFamily

    Gauge("web_connections_open", "Connections open to the worker's web server",
          registry=registry).set_function(lambda: sum(len(g.open) for g in guards))

    class Evicted:
        def collect(self) -> Any:
            family = CounterMetricFamily("web_connections_evicted", "Connections closed because the web "
                                         "server was at WEB_MAX_CONNECTIONS (the quietest first)")
            family.add_metric([], sum(g.evicted for g in guards))
            yield family

    registry.register(Evicted())


def settings_secrets(settings: Any) -> list[str]:
    """Every secret of ``settings``: its ``SecretStr`` fields and URL passwords
    (``scheme://user:password@host``, up to the last ``@``) — for :func:`streams.logs.add_secrets`."""
    from pydantic import SecretStr

    out = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
        elif isinstance(value, str) and "://" in value and "@" in value:
            userinfo = value.split("://", 1)[1].rpartition("@")[0]
            if ":" in userinfo:
                out.append(userinfo.split(":", 1)[1])
    return [s for s in out if s]


def register_web(app: Any, worker: "Worker") -> None:
    settings = worker.settings
    add_secrets(*settings_secrets(settings))
    token = settings.web_token.get_secret_value()
    guard = (auth_middleware(token, public_prefixes=("/console/login",)) if token
             else host_middleware(own_hosts(settings)))

    body_timeout = body_timeout_middleware(settings.web_body_timeout)
    connections: list[ConnectionGuard] = []
    web_connection_metrics(worker.metrics.registry, connections)

    def on_webserver_init(web: Any) -> None:
        if guard not in web.web_app.middlewares:  # Faust initialises its web server twice
            web.web_app.middlewares.extend([body_timeout, guard])
            connections.append(guard_server(web, settings))

    app.on_webserver_init = on_webserver_init

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(worker.metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/asyncapi.json")
    async def asyncapi_json(web: Any, request: Any) -> Any:
        """The AsyncAPI 3.0 document (docs/asyncapi.json, generated from the registry and models)."""
        from streams.ops.asyncapi import asyncapi_bytes

        return web.bytes(asyncapi_bytes(), content_type="application/json")

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        recovered = app.tables.recovery.completed.is_set()
        ready = recovered and not app.rebalancing
        # also while not ready: a lost broker is named, not just "starting"
        problems = worker.health.problems(lag=worker.engine_lag() if ready else 0,
                                          stall_timeout=settings.stall_timeout, send_budget=settings.send_budget)
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

