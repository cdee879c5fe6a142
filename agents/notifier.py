"""The SMS gateway port and its adapters (log-only, HTTP).

Every call carries the event's idempotency key; the HTTP adapter sends it as the
``Idempotency-Key`` header, so a gateway that honours it turns a replayed call
(after a crash between the call and the commit) into a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import aiohttp

from streams.engine.errors import GatewayRejected, GatewayUnavailable

log = logging.getLogger(__name__)


class Notification:
    """What the gateway is asked to send; the text is built only when someone reads it
    (the log-only notifier at INFO never does)."""

    __slots__ = ("order_id", "user_id", "_amount", "_text")

    def __init__(self, order_id: str, user_id: str, text: str | None = None, *, amount: object = None) -> None:
        self.order_id = order_id
        self.user_id = user_id
        self._amount = amount
        self._text = text

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = f"Payment of {self._amount} received for order {self.order_id}. Thank you!"
        return self._text

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Notification)
                and (self.order_id, self.user_id, self.text) == (other.order_id, other.user_id, other.text))

    def __repr__(self) -> str:
        return f"Notification({self.order_id!r}, {self.user_id!r}, {self.text!r})"


class Notifier(Protocol):
    channel: str
    #: True when a call waits on I/O (calls of a batch then run concurrently)
    concurrent: bool

    async def send(self, notification: Notification, idempotency_key: str) -> None:
        """Deliver ``notification``; raise a :mod:`streams.engine.errors` gateway error on failure."""

    async def close(self) -> None: ...


class LogNotifier:
    """Default when ``NOTIFIER_URL`` is empty: logs each notification (at DEBUG)."""

    channel = "log"
    concurrent = False

    def __init__(self) -> None:
        #: decided once, not per call (docs/design-notes.md, "Hot-path costs")
        self.debug = log.isEnabledFor(logging.DEBUG)

    async def send(self, notification: Notification, idempotency_key: str) -> None:
        if self.debug:
            log.debug("notify %s (key %s): %s", notification.user_id, idempotency_key, notification.text)

    async def close(self) -> None:
        return None


class HttpNotifier:
    """``POST NOTIFIER_URL`` with JSON body, ``Idempotency-Key`` header and a timeout.

    2xx → delivered. 429 and 5xx, timeouts and connection errors →
    :class:`GatewayUnavailable` (retried). Any other 4xx → :class:`GatewayRejected`
    (dead-lettered at once).
    """

    channel = "sms"
    concurrent = True

    def __init__(self, url: str, timeout: float, user_agent: str = "order-streams") -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        #: names this worker (its canonical URL) to the gateway's logs
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def send(self, notification: Notification, idempotency_key: str) -> None:
        body = {"order_id": notification.order_id, "user_id": notification.user_id, "text": notification.text}
        try:
            async with self._client().post(
                self.url, json=body, headers={"Idempotency-Key": idempotency_key, "User-Agent": self.user_agent}
            ) as resp:
                status = resp.status
                detail = (await resp.text())[:200] if status >= 300 else ""
        except asyncio.TimeoutError:
            raise GatewayUnavailable(f"timeout after {self.timeout.total}s") from None
        except aiohttp.ClientError as exc:
            raise GatewayUnavailable(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # a request the client refuses to build (e.g. a bad header): never retried
            raise GatewayRejected(f"request refused by the HTTP client: {exc}") from None
        if status == 429 or status >= 500:
            raise GatewayUnavailable(f"HTTP {status}: {detail}")
        if status >= 400:
            raise GatewayRejected(f"HTTP {status}: {detail}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def make_notifier(url: str, timeout: float, user_agent: str = "order-streams") -> Notifier:
    return HttpNotifier(url, timeout, user_agent) if url else LogNotifier()
