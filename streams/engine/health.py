"""What ``/health`` knows beyond Faust's own state: is the engine making progress?

Two bounded ends the worker reports instead of waiting silently:

- a send that keeps failing (the broker unreachable, a topic missing) is retried —
  offsets of unsent records can never be acknowledged — but once it has failed for
  longer than ``SEND_BUDGET`` the worker reports itself unhealthy;
- no batch acknowledged for ``STALL_TIMEOUT`` while records wait (lag) is a stall.
  (Before this, one hostile header stalled every service while ``/health`` said 200.)
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started_at = clock()
        #: when the oldest still-failing send first failed (None: sends are fine)
        self.send_failing_since: float | None = None
        self.last_send_error = ""
        #: when a batch was last acknowledged (or the worker became ready)
        self.last_progress_at = self.started_at

    def send_failed(self, error: BaseException) -> None:
        if self.send_failing_since is None:
            self.send_failing_since = self.clock()
        self.last_send_error = f"{type(error).__name__}: {error}"[:300]

    def send_succeeded(self) -> None:
        self.send_failing_since = None

    def progressed(self) -> None:
        self.last_progress_at = self.clock()

    def problems(self, *, lag: int, stall_timeout: float, send_budget: float) -> list[str]:
        """Why the worker is unhealthy right now (empty: it is not)."""
        now = self.clock()
        out = []
        if self.send_failing_since is not None and now - self.send_failing_since > send_budget:
            out.append(f"sends failing for {now - self.send_failing_since:.0f}s "
                       f"(last: {self.last_send_error})")
        idle = now - self.last_progress_at
        if lag > 0 and idle > stall_timeout:
            out.append(f"no batch committed for {idle:.0f}s with {lag} records waiting")
        return out
