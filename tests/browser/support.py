"""Helpers of the console's browser tests: a gateway stub on its own thread (the
browser calls block the test's thread, the worker must still get answers) and plain
HTTP posts that bypass the browser."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from harness.gateway import GatewayStub


class GatewayThread:
    """:class:`GatewayStub` answering 503 while ``down``, else 200 — on a thread."""

    def __init__(self) -> None:
        self.down = True
        self.loop = asyncio.new_event_loop()
        self.stub = GatewayStub(lambda key, seen: 503 if self.down else 200)
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)

    @property
    def url(self) -> str:
        return self.stub.url

    def __enter__(self) -> "GatewayThread":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.stub.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.stub.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def post(url: str, form: dict[str, str] | list[tuple[str, str]], headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of a form POST, redirects not followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    data = urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
