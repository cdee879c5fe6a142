"""Shared pieces of the benchmarks: inputs, CPU time, brokers, topics, the machine,
and waiting on a worker's ``/metrics`` (conditions, never quiet periods)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import resource
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.broker import EmbeddedBroker

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def order_paid_inputs(n: int, distinct: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """``n`` OrderPaid records over ``distinct`` order ids (the rest repeats), shuffled."""
    rng = random.Random(seed)
    ids = [f"o-{i}" for i in range(distinct)]
    chosen = ids + [rng.choice(ids) for _ in range(n - distinct)]
    rng.shuffle(chosen)
    return [(i.encode(), json.dumps({"order_id": i, "user_id": "u-7", "amount": 12.5, "version": "v1"}).encode())
            for i in chosen]


def paid_record(order_id: str) -> tuple[bytes, bytes]:
    return order_id.encode(), json.dumps({"order_id": order_id, "user_id": "u-7", "amount": 12.5,
                                          "version": "v1"}).encode()


def distinct_paid(n: int, chunk: int = 50_000) -> Iterator[list[tuple[bytes, bytes]]]:
    """``n`` OrderPaid records with distinct ids, in chunks (1,000,000 do not need to be
    in memory at once)."""
    for start in range(0, n, chunk):
        yield [paid_record(f"o-{i}") for i in range(start, min(n, start + chunk))]


#: SKUs of the lifecycle workload ("a handful")
SKUS = tuple(f"s-{i}" for i in range(1, 6))


def lifecycle_inputs(orders: int, seed: int = 7) -> dict[str, Any]:
    """The full-lifecycle workload: stock ``set`` commands (keyed by SKU), then one
    ``OrderCreated`` (1–2 SKUs, qty 1–2) and one ``OrderPaid`` per order.

    Stock per SKU is ~90 % of the expected demand, so most orders are reserved and
    some rejected (both are an inventory outcome)."""
    rng = random.Random(seed)
    created, paid = [], []
    demand = dict.fromkeys(SKUS, 0)
    for i in range(orders):
        oid = f"o-{i}"
        items = [{"sku": sku, "qty": rng.randint(1, 2)} for sku in rng.sample(SKUS, rng.randint(1, 2))]
        for it in items:
            demand[it["sku"]] += it["qty"]
        created.append((oid.encode(), json.dumps({"order_id": oid, "user_id": "u-7", "items": items,
                                                  "amount": "25.00", "version": "v1"}).encode()))
        paid.append(paid_record(oid))
    stock = {sku: int(need * 0.9) for sku, need in demand.items()}
    commands = [(sku.encode(), json.dumps({"kind": "set", "sku": sku, "qty": qty}).encode())
                for sku, qty in stock.items()]
    return {"stock": commands, "created": created, "paid": paid, "stock_total": sum(stock.values()),
            "demand_total": sum(demand.values())}


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


async def produce_all(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]], chunk: int = 5000) -> int:
    """Send every record (``acks="all"``), awaiting the acks ``chunk`` at a time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        pending = []
        for k, v in records:
            pending.append(await producer.send(topic, key=k, value=v))
            if len(pending) >= chunk:
                await asyncio.gather(*pending)
                sent += len(pending)
                pending = []
        await asyncio.gather(*pending)
        sent += len(pending)
    finally:
        await producer.stop()
    return sent


#: Which broker :func:`fresh_broker` starts: ``"kafka"`` (Apache Kafka, one KRaft node,
#: the broker users run) or ``"tansu"`` (the embedded memory-only stand-in). Set by
#: ``python -m bench --brokers``.
BROKER = "kafka"


@contextmanager
def fresh_broker() -> Iterator[Any]:
    """A fresh broker per measurement (Tansu keeps everything in memory; a Kafka node's
    logs go to a temporary directory removed afterwards), of the kind :data:`BROKER` names."""
    if BROKER == "tansu":
        with EmbeddedBroker() as broker:
            yield broker
        return
    import shutil
    import tempfile

    from streams.broker import KafkaBroker

    where = tempfile.mkdtemp(prefix="bench-kafka-")
    try:
        with KafkaBroker(where) as broker:
            yield broker
    finally:
        shutil.rmtree(where, ignore_errors=True)


# -- the worker's /metrics ------------------------------------------------------------

def processed(text: str, service: str, type_name: str | None = None, status: str | None = None) -> float:
    """``event_processed_total`` of ``service`` (optionally one event type / status)."""
    from harness.worker import metric_value

    labels = {"service": service}
    if type_name:
        labels["type"] = type_name
    if status:
        labels["status"] = status
    return metric_value(text, "event_processed_total", **labels)


async def wait_metrics(worker: Any, done: Callable[[str], float | bool], *, timeout: float,
                       poll: float = 0.05, slow_poll: float = 0.5) -> tuple[float, str]:
    """Poll the worker's ``/metrics`` until ``done(text)`` (a bool, or the fraction of
    the work done: complete at 1.0); returns (epoch seconds of the first poll that saw
    it complete, that text). Raises TimeoutError.

    A scrape costs the worker CPU (~4 ms for the default services), so polls are
    spaced by the estimated time left — half of it, between ``poll`` and
    ``slow_poll`` — instead of a fixed fast rhythm: the end is still seen within
    ``poll`` of the time it happened, at a few dozen scrapes per run."""
    deadline = time.monotonic() + timeout
    text = ""
    first: tuple[float, float] | None = None
    while True:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited (rc {worker.proc.returncode}); log {worker.log_path}\n{worker.tail()}")
        try:
            text = await asyncio.to_thread(worker.metrics)
        except OSError:
            text = ""
        now = time.monotonic()
        progress = float(done(text)) if text else 0.0
        if progress >= 1.0:
            return time.time(), text
        if now > deadline:
            raise TimeoutError(f"worker not done after {timeout:.0f}s ({progress:.1%}); log {worker.log_path}")
        if first is None or progress <= first[1]:
            first = (now, progress)
            wait = poll if progress > 0 else slow_poll / 2
        else:
            rate = (progress - first[1]) / (now - first[0])
            wait = (1.0 - progress) / rate / 2 if rate > 0 else slow_poll
        await asyncio.sleep(min(slow_poll, max(poll, wait)))


# -- where and what was measured ---------------------------------------------------------

def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    outputs = ("docs/benchmarks.md", "docs/benchmarks.png", "bench/results/")  # what a run writes
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
             if line[3:] and not line[3:].startswith(outputs)]
    return {"commit": git("rev-parse", "HEAD").strip(), "subject": git("log", "-1", "--format=%s").strip()[:120],
            "dirty_files": dirty}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu_model": model,
            "memory_gib": mem_gib, "platform": platform.platform(), "hostname": platform.node(),
            "load_at_start": list(os.getloadavg())}
