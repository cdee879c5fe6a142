"""agents.notifier.HttpNotifier against a local aiohttp server (127.0.0.1, free port)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from agents.notifier import HttpNotifier, LogNotifier, Notification, make_notifier
from streams.engine.errors import GatewayRejected, GatewayUnavailable, TransientError, PermanentError

NOTE = Notification("o-1001", "u-7", "Payment of 12.5 received for order o-1001. Thank you!")


@dataclass
class Gateway:
    url: str
    status: int = 200
    hang: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway(url="")

    async def handle(request: web.Request) -> web.Response:
        gw.requests.append({"method": request.method, "path": request.path,
                            "headers": dict(request.headers), "body": await request.read()})
        if gw.hang:
            await gw.release.wait()
        return web.Response(status=gw.status, text=f"status {gw.status}")

    app = web.Application()
    app.router.add_post("/sms", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    gw.url = f"http://{host}:{port}/sms"
    yield gw
    gw.release.set()
    await runner.cleanup()


@pytest.fixture
async def notifier(gateway: Gateway) -> AsyncIterator[HttpNotifier]:
    n = HttpNotifier(gateway.url, timeout=2.0)
    yield n
    await n.close()


async def test_200_is_delivered_with_idempotency_key(gateway: Gateway, notifier: HttpNotifier) -> None:
    await notifier.send(NOTE, "o-1001")
    [req] = gateway.requests
    assert req["method"] == "POST" and req["path"] == "/sms"
    assert req["headers"]["Idempotency-Key"] == "o-1001"
    assert json.loads(req["body"]) == {"order_id": "o-1001", "user_id": "u-7", "text": NOTE.text}


async def test_each_call_carries_its_own_key(gateway: Gateway, notifier: HttpNotifier) -> None:
    await notifier.send(NOTE, "k-1")
    await notifier.send(NOTE, "k-2")
    assert [r["headers"]["Idempotency-Key"] for r in gateway.requests] == ["k-1", "k-2"]


@pytest.mark.parametrize("status", [201, 202, 204])
async def test_2xx_is_delivered(gateway: Gateway, notifier: HttpNotifier, status: int) -> None:
    gateway.status = status
    await notifier.send(NOTE, "o-1001")
    assert len(gateway.requests) == 1


@pytest.mark.parametrize("status", [503, 500, 502, 429])
async def test_5xx_and_429_are_unavailable(gateway: Gateway, notifier: HttpNotifier, status: int) -> None:
    gateway.status = status
    with pytest.raises(GatewayUnavailable, match=str(status)) as info:
        await notifier.send(NOTE, "o-1001")
    assert isinstance(info.value, TransientError) and info.value.retryable


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_4xx_are_rejected(gateway: Gateway, notifier: HttpNotifier, status: int) -> None:
    gateway.status = status
    with pytest.raises(GatewayRejected, match=str(status)) as info:
        await notifier.send(NOTE, "o-1001")
    assert isinstance(info.value, PermanentError) and not info.value.retryable
    assert info.value.dlq_reason == "non_retryable"


async def test_hanging_gateway_times_out_as_unavailable(gateway: Gateway) -> None:
    gateway.hang = True
    n = HttpNotifier(gateway.url, timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(GatewayUnavailable, match="timeout"):
            await asyncio.wait_for(n.send(NOTE, "o-1001"), 5)
    finally:
        await n.close()
    assert loop.time() - started < 2
    assert len(gateway.requests) == 1


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = HttpNotifier(f"http://127.0.0.1:{port}/sms", timeout=2.0)
    try:
        with pytest.raises(GatewayUnavailable):
            await n.send(NOTE, "o-1001")
    finally:
        await n.close()


async def test_session_is_reused_and_closed(gateway: Gateway, notifier: HttpNotifier) -> None:
    await notifier.send(NOTE, "a")
    session = notifier._session
    await notifier.send(NOTE, "b")
    assert notifier._session is session
    await notifier.close()
    assert session is not None and session.closed


def test_make_notifier() -> None:
    assert isinstance(make_notifier("", 1.0), LogNotifier)
    http = make_notifier("http://127.0.0.1:1/sms", 1.5)
    assert isinstance(http, HttpNotifier)
    assert http.channel == "sms" and http.timeout.total == 1.5


async def test_log_notifier_never_fails() -> None:
    n = LogNotifier()
    assert n.channel == "log"
    await n.send(NOTE, "o-1001")
    await n.close()
