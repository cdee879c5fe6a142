"""What ``/health`` knows beyond Faust's own state: is the engine making progress?

Bounded ends the worker reports instead of waiting silently:

- a send that keeps failing (the broker unreachable, a topic missing) is retried —
  offsets of unsent records can never be acknowledged — but once it has failed for
  longer than ``SEND_BUDGET`` the worker reports itself unhealthy;
- no batch acknowledged for ``STALL_TIMEOUT`` while records wait (lag) is a stall.
  (Before this, one hostile header stalled every service while ``/health`` said 200.)
- no successful round trip to the broker for ``BROKER_LOSS_TIMEOUT`` is broker loss.
  A round trip is an answer to the probe :func:`watch_broker` sends every few
  seconds (a Metadata request for no topics, on the producer's connections), so an
  idle worker with nothing to send is healthy while the broker answers. (Before this,
  a worker cut off from its broker for 130 s, or with the broker frozen for 180 s,
  said 200 throughout.) The probe's answer clears the problem by itself.
- a partition of the worker's topics without a leader for ``BROKER_LOSS_TIMEOUT`` is
  named. The same probe asks for the worker's own topics; a leader election that ends
  within the timeout (a node restarted, a failover) reports nothing, so ``/health``
  does not flap, and the first answer with a leader again clears it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 broker_loss_timeout: float = 30.0) -> None:
        self.clock = clock
        self.started_at = clock()
        #: when the oldest still-failing send first failed (None: sends are fine)
        self.send_failing_since: float | None = None
        self.last_send_error = ""
        #: when a batch was last acknowledged (or the worker became ready)
        self.last_progress_at = self.started_at
        self.broker_loss_timeout = broker_loss_timeout
        #: when the broker last answered a request (start-up counts: the timeout runs from it)
        self.broker_answered_at = self.started_at
        self.last_broker_error = ""
        #: (topic, partition) → when the probe first found it without a leader
        self.leaderless_since: dict[tuple[str, int], float] = {}

    def leaders_seen(self, leaderless: Iterable[tuple[str, int]]) -> None:
        """The probe's answer: these partitions have no leader now (every other has)."""
        now = self.clock()
        self.leaderless_since = {tp: self.leaderless_since.get(tp, now) for tp in leaderless}

    def leaderless_for(self) -> list[tuple[str, int]]:
        """Partitions without a leader for longer than ``broker_loss_timeout``."""
        now = self.clock()
        return sorted(tp for tp, since in self.leaderless_since.items() if now - since > self.broker_loss_timeout)

    def send_failed(self, error: BaseException) -> None:
        if self.send_failing_since is None:
            self.send_failing_since = self.clock()
        self.last_send_error = f"{type(error).__name__}: {error}"[:300]

    def send_succeeded(self) -> None:
        self.send_failing_since = None

    def progressed(self) -> None:
        self.last_progress_at = self.clock()

    def broker_answered(self) -> None:
        self.broker_answered_at = self.clock()

    def broker_failed(self, error: BaseException) -> None:
        self.last_broker_error = (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)[:300]

    def broker_silent_for(self) -> float:
        """Seconds since the broker last answered."""
        return self.clock() - self.broker_answered_at

    def broker_lost(self) -> bool:
        return self.broker_silent_for() > self.broker_loss_timeout

    def problems(self, *, lag: int, stall_timeout: float, send_budget: float) -> list[str]:
        """Why the worker is unhealthy right now (empty: it is not)."""
        now = self.clock()
        out = []
        if self.broker_lost():
            out.append(f"no answer from the Kafka broker for {self.broker_silent_for():.0f}s "
                       f"(BROKER_LOSS_TIMEOUT={self.broker_loss_timeout:g}; "
                       f"last error: {self.last_broker_error or 'none'})")
        stuck = self.leaderless_for()
        if stuck:
            longest = max(now - self.leaderless_since[tp] for tp in stuck)
            named = ", ".join(f"{t}[{p}]" for t, p in stuck[:8]) + (f" and {len(stuck) - 8} more" if len(stuck) > 8 else "")
            out.append(f"{len(stuck)} partition(s) without a leader for up to {longest:.0f}s "
                       f"(BROKER_LOSS_TIMEOUT={self.broker_loss_timeout:g}): {named}")
        if self.send_failing_since is not None and now - self.send_failing_since > send_budget:
            out.append(f"sends failing for {now - self.send_failing_since:.0f}s "
                       f"(last: {self.last_send_error})")
        idle = now - self.last_progress_at
        if lag > 0 and idle > stall_timeout:
            out.append(f"no batch committed for {idle:.0f}s with {lag} records waiting")
        return out


def probe_timing(broker_loss_timeout: float) -> tuple[float, float]:
    """(seconds between probes, seconds one probe may wait for its answer): several
    probes fit in the timeout, so one lost answer never reports a loss, and a probe
    stuck on a dead connection is given up in time for the next one to see the broker
    come back."""
    interval = min(5.0, max(0.2, broker_loss_timeout / 6))
    return interval, max(1.0, min(15.0, broker_loss_timeout / 2))


async def watch_broker(health: Health, round_trip: Callable[[], Awaitable[Iterable[tuple[str, int]] | None]], *,
                       interval: float | None = None, attempt_timeout: float | None = None) -> None:
    """Forever: ``round_trip()`` (one request the broker must answer) every few seconds;
    an answer → :meth:`Health.broker_answered`, an error or no answer in time →
    :meth:`Health.broker_failed`; the partitions the answer lists without a leader →
    :meth:`Health.leaders_seen`. Logs once when the broker is lost and once when it
    answers again. ``interval``/``attempt_timeout`` default to :func:`probe_timing`."""
    default_interval, default_timeout = probe_timing(health.broker_loss_timeout)
    interval = default_interval if interval is None else interval
    attempt_timeout = default_timeout if attempt_timeout is None else attempt_timeout
    reported = leaders_reported = False
    while True:
        try:
            leaderless = await asyncio.wait_for(round_trip(), attempt_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            health.broker_failed(exc if str(exc) or not isinstance(exc, asyncio.TimeoutError)
                                 else asyncio.TimeoutError(f"no answer in {attempt_timeout:g}s"))
        else:
            if reported:
                log.warning("the Kafka broker answers again (silent for %.0fs)", health.broker_silent_for())
                reported = False
            health.broker_answered()
            health.leaders_seen(leaderless or ())
            stuck = health.leaderless_for()
            if stuck and not leaders_reported:
                log.error("%d partition(s) without a leader for more than BROKER_LOSS_TIMEOUT=%g: /health answers "
                          "503 until they have one: %s", len(stuck), health.broker_loss_timeout,
                          ", ".join(f"{t}[{p}]" for t, p in stuck[:8]))
            elif leaders_reported and not health.leaderless_since:
                log.warning("every partition of the worker's topics has a leader again")
            leaders_reported = bool(stuck) or (leaders_reported and bool(health.leaderless_since))
        if not reported and health.broker_lost():
            log.error("no answer from the Kafka broker for %.0fs (BROKER_LOSS_TIMEOUT=%g): /health answers 503 "
                      "until it answers; last error: %s", health.broker_silent_for(), health.broker_loss_timeout,
                      health.last_broker_error)
            reported = True
        await asyncio.sleep(interval)
