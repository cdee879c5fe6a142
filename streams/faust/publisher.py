"""The :class:`~streams.engine.ports.Publisher` on the worker's own Faust producer.

:meth:`KafkaPublisher.send_many` groups records by topic and partition into aiokafka
record batches (``create_batch`` / ``send_batch``): one future per batch instead of
per record (docs/design-notes.md, "Hot-path costs"). A record
without an explicit partition gets the one its key maps to under the producer's own
partitioner, exactly as a plain ``send`` would choose. Broker errors that cannot
pass by waiting are translated to the engine's permanent errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import (
    InvalidTopicError, MessageSizeTooLargeError, RecordListTooLargeError, TopicAuthorizationFailedError,
)

from streams.engine.errors import TooLarge, UnknownDestination, Unserializable
from streams.engine.keys import key_partition
from streams.engine.ports import Publisher
from streams.engine.records import Ack, Outgoing
from streams.engine.transactions import current
from streams.faust.compat import aiokafka_producer

PERMANENT: dict[type[BaseException], type[Exception]] = {
    MessageSizeTooLargeError: TooLarge,
    RecordListTooLargeError: TooLarge,
    InvalidTopicError: UnknownDestination,
    TopicAuthorizationFailedError: UnknownDestination,
}


def translate(exc: BaseException) -> BaseException:
    """An aiokafka error that cannot pass by waiting → the engine's permanent error."""
    for kind, ours in PERMANENT.items():
        if isinstance(exc, kind):
            return ours(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TypeError):
        return Unserializable(str(exc))
    return exc


async def _translated(future: Any) -> Any:
    try:
        return await future
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise translate(exc) from None


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future


class KafkaPublisher(Publisher):
    def __init__(self, app: Any, *, max_message_bytes: int) -> None:
        self.app = app
        self.max_message_bytes = max_message_bytes

    def _producer(self) -> Any:
        """Exactly-once: the producer of the batch's transaction (engine rule T2: every
        record of a batch goes in it); otherwise Faust's producer."""
        txn = current()
        return txn.producer.client if txn is not None else aiokafka_producer(self.app)

    async def send_many(self, messages: Sequence[Outgoing]) -> list[Ack]:
        producer = self._producer()
        counts = {topic: len(await producer.partitions_for(topic))  # metadata: at once when known
                  for topic in {m.topic for m in messages}}
        groups: dict[tuple[str, int], list[int]] = {}
        for i, m in enumerate(messages):
            count = counts[m.topic]
            # An explicit partition (co-location with the source) unless the topic lacks it.
            partition = m.partition if m.partition is not None and m.partition < count else key_partition(m.key, count)
            groups.setdefault((m.topic, partition), []).append(i)
        out: list[Ack | None] = [None] * len(messages)
        for (topic, partition), indexes in groups.items():
            batch, members = producer.create_batch(), []
            for i in indexes:
                m = messages[i]
                headers = list(m.headers)
                if batch.append(key=m.key, value=m.value, timestamp=None, headers=headers) is None:
                    if members:  # full: send it, start the next one
                        await self._send_batch(producer, batch, topic, partition, members, out)
                        batch, members = producer.create_batch(), []
                    if batch.append(key=m.key, value=m.value, timestamp=None, headers=headers) is None:
                        out[i] = (await self._send_one(producer, m, partition), 0)  # larger than a batch
                        continue
                members.append(i)
            if members:
                await self._send_batch(producer, batch, topic, partition, members, out)
        return [a for a in out if a is not None]

    async def send_partition(self, topic: str, partition: int,
                             records: Sequence[tuple[bytes, bytes | None]]) -> list[Ack]:
        producer = self._producer()
        out: list[Ack] = []
        batch, n = producer.create_batch(), 0
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None, headers=[]) is None:
                if n:
                    out.extend(await self._flush_batch(producer, batch, topic, partition, n))
                    batch, n = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None, headers=[]) is None:
                    out.append((await self._send_one(producer, Outgoing(topic, key, value, (), partition),
                                                     partition), 0))
                    continue
            n += 1
        if n:
            out.extend(await self._flush_batch(producer, batch, topic, partition, n))
        return out

    @staticmethod
    async def _flush_batch(producer: Any, batch: Any, topic: str, partition: int, n: int) -> list[Ack]:
        batch.close()
        future = asyncio.ensure_future(_translated(await producer.send_batch(batch, topic, partition=partition)))
        return [(future, i) for i in range(n)]

    @staticmethod
    async def _send_batch(producer: Any, batch: Any, topic: str, partition: int, members: list[int],
                          out: list[Ack | None]) -> None:
        batch.close()  # a closed batch goes out at once, without lingering
        future = asyncio.ensure_future(_translated(await producer.send_batch(batch, topic, partition=partition)))
        for n, j in enumerate(members):
            out[j] = (future, n)

    @staticmethod
    async def _send_one(producer: Any, m: Outgoing, partition: int) -> Any:
        try:
            future = await producer.send(m.topic, m.value, m.key, partition, None, list(m.headers) or None)
        except (MessageSizeTooLargeError, InvalidTopicError, TypeError) as exc:
            return _failed(translate(exc))
        return asyncio.ensure_future(_translated(future))
