"""Best-effort calls with a deadline: for work whose loss is acceptable.

``BestEffortCaller.call(target, fn)`` starts ``fn()`` in the background and returns
at once, so the event that asked for it is never slowed, retried or failed by it:

- at most ``RPC_MAX_IN_FLIGHT`` calls run at once; beyond that a call is
  **refused** (not queued) and counted;
- each call gets ``RPC_TIMEOUT`` seconds, then it is cancelled and counted;
- its result is always collected (no "exception was never retrieved");
- ``rpc_calls_total{target,outcome}`` with outcome ``ok``, ``error``, ``timeout``,
  ``refused``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

log = logging.getLogger(__name__)

OK, ERROR, TIMEOUT, REFUSED = "ok", "error", "timeout", "refused"


class BestEffortCaller:
    def __init__(self, outcomes: Counter, *, timeout: float, max_in_flight: int) -> None:
        self.outcomes = outcomes
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.in_flight: set[asyncio.Task[None]] = set()

    def call(self, target: str, fn: Callable[[], Awaitable[Any]]) -> bool:
        """Start ``fn()``; False (and counted ``refused``) when too many are running."""
        if len(self.in_flight) >= self.max_in_flight:
            self.outcomes.labels(target, REFUSED).inc()
            return False
        task = asyncio.ensure_future(self._run(target, fn))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return True

    async def _run(self, target: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            await asyncio.wait_for(fn(), self.timeout)
            outcome = OK
        except asyncio.TimeoutError:
            outcome = TIMEOUT
        except asyncio.CancelledError:
            self.outcomes.labels(target, ERROR).inc()
            raise
        except Exception as exc:
            outcome = ERROR
            log.debug("best-effort call to %s failed: %r", target, exc)
        self.outcomes.labels(target, outcome).inc()

    async def close(self) -> None:
        """Cancel what is still running and wait for it (at shutdown)."""
        tasks = list(self.in_flight)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
