"""A local HTTP stand-in for the SMS gateway, with scripted answers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from streams.broker import free_port

#: (idempotency key, how many times this key was seen before) → HTTP status
Behaviour = Callable[[str, int], int]


def always(status: int) -> Behaviour:
    return lambda key, seen: status


class GatewayStub:
    def __init__(self, behaviour: Behaviour = always(200), delay: float = 0.0) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.port = free_port()
        self.requests: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sms"

    async def _handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        await request.read()
        seen = self.requests[key]
        self.requests[key] += 1
        self.times.setdefault(key, []).append(asyncio.get_running_loop().time())
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.behaviour(key, seen)
        if status < 300:
            self.accepted[key] += 1
        return web.json_response({"key": key}, status=status)

    async def start(self) -> "GatewayStub":
        app = web.Application()
        app.router.add_post("/sms", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
