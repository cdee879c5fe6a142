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
        #: (idempotency key, User-Agent, loop time) of every request, in arrival order
        self.agents: list[tuple[str, str, float]] = []
        self.in_flight: Counter[str] = Counter()
        #: keys that had two requests in flight at once
        self.overlapping: set[str] = set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sms"

    async def _handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        self.agents.append((key, request.headers.get("User-Agent", ""), asyncio.get_running_loop().time()))
        await request.read()
        seen = self.requests[key]
        self.requests[key] += 1
        self.times.setdefault(key, []).append(asyncio.get_running_loop().time())
        self.in_flight[key] += 1
        if self.in_flight[key] > 1:
            self.overlapping.add(key)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight[key] -= 1
        status = self.behaviour(key, seen)
        if status < 300:
            self.accepted[key] += 1
        return web.json_response({"key": key}, status=status)

    async def start(self) -> "GatewayStub":
        app = web.Application()
        app.router.add_post("/sms", self._handle)
        # In-flight requests (a stub that hangs on purpose) get 1 s at stop, not aiohttp's 60 s.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
