"""Produce and consume helpers for integration tests (plain aiokafka)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


@dataclass(frozen=True)
class Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    *,
    headers: Sequence[tuple[str, bytes]] = (),
    partition: int | None = None,
) -> int:
    """Send every ``(key, value)`` with ``acks="all"`` and await all acks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=v, key=k, headers=list(headers) or None, partition=partition)
            for k, v in records
        ]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    until: Callable[[list[Consumed]], bool] | None = None,
    idle: float = 3.0,
    timeout: float = 60.0,
) -> list[Consumed]:
    """Every record of ``topic`` from the beginning.

    Stops when ``expect`` records were read (or ``until(records)`` is true) and
    nothing more arrived for ``idle`` seconds — so extra records, duplicates, are
    seen too — or at ``timeout``.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    out: list[Consumed] = []
    try:
        deadline = time.monotonic() + timeout
        while not consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                return out
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            got = False
            for recs in batch.values():
                for r in recs:
                    got = True
                    out.append(Consumed(r.topic, r.partition, r.offset, r.key, r.value,
                                        {k: v for k, v in (r.headers or ())}, r.timestamp))
            if got:
                last_new = time.monotonic()
            enough = (expect is None or len(out) >= expect) and (until is None or until(out))
            if enough and time.monotonic() - last_new >= idle:
                break
        return out
    finally:
        await consumer.stop()
