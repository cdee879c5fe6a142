"""The worker's web server limits without a worker (issue 23, item 4): the connection
cap stays below the file limit, the quietest connection makes room for a new one, the
event loop's accept errors are logged once per interval, and the Faust/aiohttp private
names :func:`streams.http.web.guard_server` relies on exist. (Idle and half-open connections
closed on a real worker, /health during a flood: tests/integration/test_worker_web_server.py.)"""

from __future__ import annotations

import asyncio
import logging

import faust
from aiohttp.web_runner import AppRunner, TCPSite

from streams.logs import RateLimitAcceptErrors
from streams.http.web import ConnectionGuard, GuardedSite, connection_cap


def test_the_connection_cap_leaves_half_the_file_limit_for_outgoing_calls():
    assert connection_cap(1000, file_limit=1024) == 512
    assert connection_cap(1000, file_limit=20_000) == 1000
    assert connection_cap(100_000, file_limit=20_000) == 10_000
    assert connection_cap(1000, file_limit=10) == 16
    assert connection_cap(1000) <= 1000


class Conn:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def test_beyond_the_cap_the_quietest_connection_is_closed():
    guard = ConnectionGuard(cap=3)
    a, b, c, d, e = (Conn(n) for n in "abcde")
    for conn in (a, b, c):
        guard.opened(conn)
    guard.active(a)  # a sent something: b is now the quietest
    guard.opened(d)
    assert b.closed and not (a.closed or c.closed or d.closed)
    guard.closed(c)
    guard.opened(e)
    assert not any(x.closed for x in (a, d, e)) and len(guard.open) == 3 and guard.evicted == 1


def test_accept_errors_are_logged_once_per_interval_with_a_count():
    now = [0.0]
    limit = RateLimitAcceptErrors(interval=60, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, "", 0, msg, None, None)

    passed = []
    for _ in range(1000):  # asyncio retries accept every second, and logged every time
        r = record("socket.accept() out of system resource\nsocket: <...>")
        if limit.filter(r):
            passed.append(r.getMessage())
        now[0] += 0.5
    assert len(passed) == 9  # 500 s: once a minute
    assert "(119 more in the last 60 s not logged)" in passed[1]
    assert limit.filter(record("something else"))


def test_the_private_names_guard_server_relies_on_exist():
    app = faust.App("web-limits-test", web_enabled=True)
    web = app.web
    assert isinstance(web._runner, AppRunner)
    assert isinstance(web._runner._kwargs, dict)
    assert "tcp" in web._transport_handlers


async def test_a_guarded_site_serves_and_caps_connections():
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = AppRunner(app, keepalive_timeout=30)
    await runner.setup()
    guard = ConnectionGuard(cap=16)
    site = GuardedSite(runner, "127.0.0.1", 0, guard=guard)
    assert isinstance(site, TCPSite)
    for name in ("_host", "_port", "_ssl_context", "_backlog", "_reuse_address", "_reuse_port", "_runner"):
        assert hasattr(site, name), name  # what GuardedSite.start reads, as TCPSite.start does
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
        assert guard.evicted >= 50 - 16 and len(guard.open) <= 16
        for _, w in idle:
            w.close()
    finally:
        await runner.cleanup()
