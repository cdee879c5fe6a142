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
from streams.engine.records import TP
from streams.faust.compat import fetch_position, read_offset
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
    """Per assigned partition: the high watermark − the next offset to process.

    A topic written in transactions (``PROCESSING_GUARANTEE=exactly_once``) ends each
    transaction with a commit marker, an offset that holds no record, so the next
    offset to process stops one short of the high watermark for good. Those offsets
    count as read once aiokafka's fetch position has passed them and nothing fetched
    waits to be processed (the engine is between fetches: its lock is free)."""
    consumer = app.consumer if not app.rebalancing else None
    if consumer is None:
        return []
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet
        return []
    engine = getattr(consumer, "engine", None)
    lock = getattr(consumer, "engine_lock", None)
    idle = lock is not None and not lock.locked()
    out = []
    for tp in sorted(assigned):
        try:
            high = consumer.highwater(tp)
        except Exception:
            continue
        if high is None:
            continue
        nxt = engine.next.get(TP(tp.topic, tp.partition)) if engine is not None else None
        if nxt is None:
            read = read_offset(consumer, tp)
            nxt = int(read) + 1 if read is not None else 0
        if idle and nxt < int(high) and (fetch_position(consumer, tp) or 0) >= int(high):
            nxt = int(high)  # the rest are markers (or aborted records): nothing to process
        out.append((tp.topic, tp.partition, max(0, int(high) - nxt)))
    return out


def retry_age(failed_at_ms: int | None) -> float:
    """Seconds since the oldest waiting retry failed (0 when none waits)."""
    return max(0.0, time.time() - failed_at_ms / 1000) if failed_at_ms is not None else 0.0


class WorkerApp(faust.App):  # type: ignore[misc]
    """The Faust app of a worker (``streams.app``), with what the composition root built
    for it (:func:`streams.assembly.create_app` sets ``worker`` before returning)."""

    worker: Worker
