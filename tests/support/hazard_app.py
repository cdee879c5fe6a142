"""A worker that causes the consumer-position hazard on purpose (``faust -A
tests.support.hazard_app worker``): after table recovery, its seek to committed
offsets is held back until a fetch of the engine's topics has arrived first — the
ordering that once lost 487 events (a fetch delivered after recovery, before the
seek). ``HAZARD_MAX_WAIT`` bounds the hold (seconds, default 20).

The window only exists when Faust replays a changelog itself (its fetcher then runs
through the end of recovery, and it resumes the source partitions before it seeks),
so this worker leaves recovery to Faust: the bulk loader is off."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from streams.settings import load_settings
from streams.assembly import create_app

log = logging.getLogger("hazard")

app = create_app(load_settings())
_Engine: Any = app.transport.Consumer


class HazardConsumer(_Engine):  # type: ignore[misc, valid-type]
    async def highwaters(self, *partitions: Any) -> Any:
        from faust.transport.drivers.aiokafka import Consumer

        return await Consumer.highwaters(self, *partitions)  # Faust's, without the bulk loader

    async def perform_seek(self) -> None:
        driver = self.engine
        before = driver.seek_backs["not_ready"]
        deadline = time.monotonic() + float(os.environ.get("HAZARD_MAX_WAIT", "20"))
        while driver.seek_backs["not_ready"] == before and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        log.warning("hazard: seek to committed offsets after %d not-ready fetch(es)",
                    driver.seek_backs["not_ready"] - before)
        await super().perform_seek()


app.transport.Consumer = HazardConsumer
