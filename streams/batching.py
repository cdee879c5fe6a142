"""Hands a Faust stream to a batch processor, acknowledging only what was processed.

Faust's ``take()`` acknowledges its buffered events in a ``finally`` block — also
when the body is cancelled or raises — so a worker stopped mid-batch could commit
offsets of events it never processed. Here the stream is read with acks disabled
(``noack``), events are collected into batches of at most ``size`` (waiting at most
``within`` seconds for a batch to fill), and each event is acknowledged only after
``process`` returned for its batch. A cancelled or crashed batch leaves its offsets
unacknowledged, so they are delivered again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.pipeline import Record


def to_record(event: Any) -> Record:
    msg = event.message
    headers = msg.headers or ()
    if not isinstance(headers, dict):
        headers = {k: v for k, v in headers}
    ts = msg.timestamp
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        timestamp_ms=int(ts * 1000) if ts else 0,
        headers=headers,
    )


async def run_batches(
    stream: Any,
    process: Callable[[Sequence[Record]], Awaitable[Any]],
    *,
    size: int,
    within: float,
) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=size * 2)

    manual = stream.noack()

    async def read() -> None:
        async for event in manual.events():
            await queue.put(event)

    reader = asyncio.ensure_future(read())
    loop = asyncio.get_running_loop()
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:  # the stream ended or failed
                get.cancel()
                reader.result()
                return
            batch = [get.result()]
            deadline = loop.time() + within
            while len(batch) < size:
                try:
                    batch.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            await process([to_record(e) for e in batch])
            for event in batch:
                await manual.ack(event)
    finally:
        reader.cancel()
