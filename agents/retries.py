"""Retry-tier consumers: ``<service>.retry.<n>`` back into the service's pipeline.

A record in tier ``n`` carries ``x-not-before`` (epoch ms). The tier's agent takes
records in arrival order, waits until the head is due, then hands every due record
it holds to the same :class:`streams.pipeline.Pipeline` as the main topic — same
dedup table, same handler — which sends a failure on to tier ``n + 1`` or the DLQ.
Records in one tier all got the same delay, so arrival order is (nearly) due order;
a record is never run before its ``x-not-before``.

Why waiting here does not hold up the main topic: Faust gives every agent its own
buffer, and when a buffer is under pressure it pauses only that buffer's partitions
(the retry tier's), never the conductor; the consumer keeps polling, so the poll
interval is not tripped either (tests/integration/test_retries.py measures it).

Rebalances: Faust waits at a rebalance until every event handed to an agent is
acknowledged. A tier holding records for minutes would stall the group, so when a
rebalance starts (``app.rebalancing_count`` changes) the tier sends every record it
holds, unchanged, back to the end of its own tier and partition, awaits the acks,
and only then acknowledges the originals. Risk next to it: a crash between those two
steps leaves two copies of a retry; the dedup table makes the second a duplicate
when the first succeeded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from streams import headers as H
from streams.batching import to_record
from streams.pipeline import Outgoing, Pipeline, Record, send_until_acked

log = logging.getLogger(__name__)


def not_before_ms(record: Record) -> int:
    return H.integer(record.headers, H.NOT_BEFORE, 0)


class RetryTier:
    def __init__(
        self,
        app: Any,
        pipeline: Pipeline[Any],
        tier: int,
        *,
        batch_size: int,
        clock: Callable[[], float],
        poll: float = 0.1,
    ) -> None:
        self.app = app
        self.pipeline = pipeline
        self.tier = tier
        self.batch_size = batch_size
        self.clock = clock
        self.poll = poll
        #: (record, faust event) in arrival order, not yet processed
        self.holding: list[tuple[Record, Any]] = []

    def oldest_failed_at_ms(self) -> int | None:
        if not self.holding:
            return None
        return min(H.integer(r.headers, H.FAILED_AT, 0) or r.timestamp_ms for r, _ in self.holding)

    async def run(self, stream: Any) -> None:
        manual = stream.noack()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.batch_size)

        async def read() -> None:
            async for event in manual.events():
                await queue.put(event)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                generation = self.app.rebalancing_count
                if not self.holding:
                    event = await self._next(queue, reader)
                    if event is None:
                        return
                    self.holding.append((to_record(event), event))
                while len(self.holding) < self.batch_size and not queue.empty():
                    event = queue.get_nowait()
                    self.holding.append((to_record(event), event))
                due_at = not_before_ms(self.holding[0][0])
                now_ms = int(self.clock() * 1000)
                if due_at > now_ms:
                    await asyncio.sleep(min(self.poll, (due_at - now_ms) / 1000))
                    if self.app.rebalancing_count != generation or self.app.rebalancing:
                        await self._requeue_holding(manual, queue)
                    continue
                due = [(r, e) for r, e in self.holding if not_before_ms(r) <= now_ms]
                self.holding = [(r, e) for r, e in self.holding if not_before_ms(r) > now_ms]
                await self.pipeline.process([r for r, _ in due])
                for _, event in due:
                    await manual.ack(event)
        finally:
            reader.cancel()

    async def _next(self, queue: asyncio.Queue[Any], reader: asyncio.Future[None]) -> Any:
        get = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        reader.result()
        return None

    async def _requeue_holding(self, manual: Any, queue: asyncio.Queue[Any]) -> None:
        """Release held records at a rebalance: copy to the tier's end, then ack."""
        while not queue.empty():
            event = queue.get_nowait()
            self.holding.append((to_record(event), event))
        held, self.holding = self.holding, []
        if not held:
            return
        copies = [
            Outgoing(r.topic, r.key, r.value, tuple(r.headers.items()), r.partition) for r, _ in held
        ]
        await send_until_acked(self.pipeline.publisher, copies)
        for _, event in held:
            await manual.ack(event)
        log.info("%s tier %d: re-queued %d waiting retries for a rebalance",
                 self.pipeline.service.name, self.tier, len(held))
