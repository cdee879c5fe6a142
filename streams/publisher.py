"""Publishing on the worker's own Faust producer, one future per batch.

:meth:`FaustPublisher.send` hands one record to Faust's producer (a future per
record). :meth:`FaustPublisher.send_many` groups records by topic and partition
into aiokafka record batches (``create_batch`` / ``send_batch``): one future — one
callback — per batch instead of per record. That was the largest single cost left
on the fast path (the event loop's callback scheduling: 17 % of samples).
A record without an explicit partition gets the one its key maps to under the
producer's own partitioner, exactly as ``send`` would choose.
It reaches the aiokafka producer through Faust's ``Producer._ensure_producer``
(faust-streaming 0.15.3, pinned).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from streams.pipeline import Outgoing


class FaustPublisher:
    """:class:`streams.pipeline.Publisher` on a Faust app's producer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._partitions: dict[str, Any] = {}

    async def send(self, message: Outgoing) -> Any:
        return await self.app.producer.send(
            message.topic, message.key, message.value, message.partition, None,
            list(message.headers) or None,
        )

    async def _partition_of(self, producer: Any, message: Outgoing) -> int:
        if message.partition is not None:
            return message.partition
        if message.topic not in self._partitions:
            await producer.partitions_for(message.topic)  # loads metadata once per topic
            self._partitions[message.topic] = True
        return int(producer._partition(message.topic, None, None, None, message.key, message.value))

    async def send_many(self, messages: Sequence[Outgoing]) -> list[Any]:
        """Enqueue every message; return one awaitable per message (shared per batch)."""
        producer = self.app.producer._ensure_producer()
        groups: dict[tuple[str, int], list[int]] = {}
        for i, m in enumerate(messages):
            groups.setdefault((m.topic, await self._partition_of(producer, m)), []).append(i)
        out: list[Any] = [None] * len(messages)
        for (topic, partition), indexes in groups.items():
            batch, members = producer.create_batch(), []
            for i in indexes:
                m = messages[i]
                if batch.append(key=m.key, value=m.value, timestamp=None, headers=list(m.headers)) is None:
                    if members:  # full: send it, start the next one
                        batch.close()  # a closed batch goes out at once, without lingering
                        future = await producer.send_batch(batch, topic, partition=partition)
                        for j in members:
                            out[j] = future
                        batch, members = producer.create_batch(), []
                    if batch.append(key=m.key, value=m.value, timestamp=None, headers=list(m.headers)) is None:
                        out[i] = await self.send(m)  # larger than a batch on its own
                        continue
                members.append(i)
            if members:
                batch.close()
                future = await producer.send_batch(batch, topic, partition=partition)
                for j in members:
                    out[j] = future
        return out


async def gather_acks(futures: Sequence[Any]) -> list[Any]:
    """Await per-message awaitables that may share one future per batch."""
    unique = {id(f): f for f in futures}
    results = dict(zip(unique, await asyncio.gather(*unique.values(), return_exceptions=True)))
    return [results[id(f)] for f in futures]
