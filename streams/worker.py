"""The running worker: what the composition root (:mod:`streams.assembly`) built, for the
web routes, the console, the commands and the tests; and what it reports about itself
(consumer lag, the age of the oldest waiting retry)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from streams.engine.health import Health
from streams.engine.position import Driver
from streams.faust.compat import read_offset
from streams.faust.recovery import Progress
from streams.faust.stores import TableStore
from streams.metrics import Metrics
from streams.settings import WorkerSettings


@dataclass
class Worker:
    """What the app factory built, for the web routes, commands and tests."""

    app: Any
    settings: WorkerSettings
    metrics: Metrics
    health: Health
    driver: Driver
    store: TableStore
    services: dict[str, Any]
    tables: dict[str, Any]
    recovery: Progress
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def engine_lag(self) -> int:
        return sum(lag for topic, _, lag in consumer_lag(self.app) if topic in self.driver.topics)


def consumer_lag(app: Any) -> list[tuple[str, int, int]]:
    """Per assigned partition: the high watermark − the next offset to read."""
    consumer = app.consumer if not app.rebalancing else None
    if consumer is None:
        return []
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet
        return []
    out = []
    for tp in sorted(assigned):
        try:
            high = consumer.highwater(tp)
        except Exception:
            continue
        if high is None:
            continue
        read = read_offset(consumer, tp)
        out.append((tp.topic, tp.partition, max(0, int(high) - (int(read) + 1 if read is not None else 0))))
    return out


def retry_age(failed_at_ms: int | None) -> float:
    """Seconds since the oldest waiting retry failed (0 when none waits)."""
    return max(0.0, time.time() - failed_at_ms / 1000) if failed_at_ms is not None else 0.0


class WorkerApp(faust.App):  # type: ignore[misc]
    """The Faust app of a worker (``streams.app``), with what the composition root built
    for it (:func:`streams.assembly.create_app` sets ``worker`` before returning)."""

    worker: Worker
