"""Waits for the outbox's producer side: on conditions, never on quiet periods.

A relay marks a row ``sent`` only after the broker acknowledged its record (and, on
PostgreSQL, in the transaction that holds the row's claim). So once the order
service's ``GET /outbox/stats`` shows no pending row — after every API call that
wrote rows was answered — every record the relays will publish for those rows is
already in the broker: reading a topic to its end (:func:`harness.kafka.read_topic`)
then sees every duplicate too.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], T | Awaitable[T]],
    ok: Callable[[T], bool] = bool,
    *,
    what: str,
    timeout: float = 60.0,
    interval: float = 0.1,
) -> T:
    """Call ``probe`` (sync or async) until ``ok(value)``; return that value. Raise
    AssertionError naming ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if ok(value):  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


async def outbox_stats(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/outbox/stats") as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())


async def wait_outbox_drained(base_url: str, *, sent: int = 0, timeout: float = 120.0) -> dict[str, Any]:
    """Until the order service at ``base_url`` has no pending outbox row and at least
    ``sent`` rows are sent (the relays have published them and had them acknowledged);
    returns those stats. Call it after the API calls that wrote the rows were answered."""
    return await wait_for(
        lambda: outbox_stats(base_url), lambda s: s["pending"] == 0 and s["sent"] >= sent,
        what=f"outbox drained ({sent} rows sent, none pending)", timeout=timeout, interval=0.2,
    )
