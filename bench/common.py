"""Shared pieces of the benchmarks: inputs, CPU time, brokers, topics."""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.broker import EmbeddedBroker

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def order_paid_inputs(n: int, distinct: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """``n`` OrderPaid records over ``distinct`` order ids (the rest repeats), shuffled."""
    rng = random.Random(seed)
    ids = [f"o-{i}" for i in range(distinct)]
    chosen = ids + [rng.choice(ids) for _ in range(n - distinct)]
    rng.shuffle(chosen)
    return [(i.encode(), json.dumps({"order_id": i, "user_id": "u-7", "amount": 12.5, "version": "v1"}).encode())
            for i in chosen]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Span:
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@contextmanager
def measured() -> Iterator[Span]:
    span = Span()
    t0, c0 = time.perf_counter(), self_cpu_seconds()
    yield span
    span.seconds = time.perf_counter() - t0
    span.cpu_seconds = self_cpu_seconds() - c0


async def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], chunk: int = 5000) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(0, len(records), chunk):
            futures = [await producer.send(topic, key=k, value=v) for k, v in records[i:i + chunk]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


@contextmanager
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """The embedded broker keeps everything in memory: a fresh one per measurement."""
    with EmbeddedBroker() as broker:
        yield broker
