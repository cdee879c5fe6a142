"""Chaos runs against real processes: ``python -m bench.chaos [--short | --long]``.

Every scenario starts its own embedded broker (Tansu, memory only) on a free port,
real ``faust -A streams worker`` / ``python -m orders …`` processes (the worker runs
every consuming service: notifications, order-state, inventory), and an SMS gateway
stub in this process that counts requests per ``Idempotency-Key``. Then it injects
one kind of fault and checks what came out:

* ``worker-kill-storm`` — the full lifecycle at a steady rate (``OrderCreated`` then
  ``OrderPaid`` per order, stock seeded for every SKU); the worker is SIGKILLed at
  random points K times (restarted after each, on its own data dir). Before each
  kill the group's committed offsets of ``OrderPaid`` are recorded: every life of
  the worker must move them forward (a worker that never commits re-fetches its
  whole backlog after each restart). After the drain the worker's tables (every
  order's state, every SKU's stock) must equal the reference model's
  (harness/reference.py, the differential test's), fed the records the worker read
  (:func:`storm_model`, :func:`check_against_model`).
* ``relay-kill`` — orders created and paid over HTTP (order service with
  ``RELAY_ENABLED=false``, SQLite) while a separate relay (fixed ``RELAY_ID``) is
  SIGKILLed K times.
* ``broker-restart`` — order service with its relay; the broker is SIGKILLed
  mid-burst and a new, *empty* one started on the same port (memory store: topics,
  offsets, changelogs and acknowledged records are gone), its event topics created
  while the order service is paused (see :func:`restart_with_topics`); the worker is
  restarted with a wiped ``DATA_DIR``. Effects are counted at the gateway stub, so
  those from before the restart count. Then ``faust -A streams reconcile --sla 0
  --repair`` re-publishes what the broker swallowed.
* ``poison-flood`` — good ``OrderPaid`` interleaved with as many poison records
  (not JSON, wrong types, unknown version, empty value, no key).
* ``leader-kill`` — 3 Apache Kafka nodes; the leader of ``OrderPaid`` partition 0
  SIGKILLed and restarted under load.
* ``eos-kill-storm`` — ``worker-kill-storm`` on one Apache Kafka node with
  ``PROCESSING_GUARANTEE=exactly_once``, the worker SIGKILLed every ~10 s. Its bound
  is not kills × ``BATCH_SIZE``: a ``read_committed`` reader of every derived topic
  must see exactly one ``NotificationSent`` and one inventory answer per order — 0
  lost, 0 repeated (:func:`derived_once`) — and the worker's tables must equal the
  reference model's, as in ``worker-kill-storm`` (fed what a ``read_committed`` reader
  sees). The gateway stays at least once. The drain
  condition is :func:`drained_committed` (under exactly_once the group's offset stops
  before the commit marker ending a transactional topic).

No step waits for a quiet period. "Done" is always a condition: every expected
effect seen at the gateway; the order service's outbox has nothing pending; and
the worker's consumer group has committed every record in every topic it reads
(:func:`drained` — the commit protocol acknowledges an offset only after the
record's side effects and derived records, so after that the gateway's counts and
the topics are final).

Per scenario one row: produced (events that should have an effect), lost (no
effect — for ``worker-kill-storm`` also: not ``NOTIFIED`` on the worker, or no
``NotificationSent``), duplicate effects (gateway requests beyond the first per key
+ ``NotificationSent`` records beyond the first per key), repeated events against
their budget, dead-lettered, seconds to drain (from the later of the last fault
and the end of production until every expected effect was seen).

**Duplicate budget.** The commit protocol (streams/engine/pipeline.py) repeats at
most one batch's side effects per crash of a worker, so an event's effects may be
repeated at most ``worker kills × BATCH_SIZE`` times in a scenario (the worker's
``BATCH_SIZE``, default 500; 0 for scenarios that kill no worker). An event
repeated once repeats its gateway call *and* its ``NotificationSent``, so the
count checked is, per key, the larger of its two repeats (summed over keys). In
``broker-restart`` the worker's memory is wiped with the broker, so a second call
for an order already notified before a restart (re-published by reconcile) is
counted as *forgotten*, not against the budget. Exceeding the budget fails the
scenario like a loss does.

The table goes to ``docs/reliability.md``; the exit code is 1 when a scenario lost
anything, exceeded its duplicate budget, failed one of its own checks, or crashed.

Importing ``harness`` needs the repository root on ``sys.path``: run it from there
(``python -m bench.chaos``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.broker import EmbeddedBroker, free_port
from streams.events import (
    EVENT_TYPES, InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderPaid,
)
from streams.registry import INVENTORY_ANSWERS, INVENTORY_REQUESTS, SERVICES
from streams.settings import WorkerSettings
from harness.events import created, paid
from harness.gateway import GatewayStub
from harness.kafka import GROUP, Consumed, _partitions, committed, end_offsets, read_topic, wait_consumed
from harness.orders import OrdersClient, OrdersProcess
from harness.outbox_waits import outbox_stats, wait_for
from harness.reference import Reference, compare_order, compare_stock
from harness.worker import ROOT, WorkerProcess, metric_value

PAID, CREATED, SENT, DLQ = OrderPaid.topic(), OrderCreated.topic(), NotificationSent.topic(), "notifications.dlq"
DLQS = tuple(s.dlq for s in SERVICES)
DEFAULT_DOC = ROOT / "docs" / "reliability.md"
#: The worker's BATCH_SIZE when nothing sets it.
DEFAULT_BATCH_SIZE: int = WorkerSettings.model_fields["batch_size"].default
_TIERS = len(WorkerSettings.model_fields["retry_delays"].default)
#: Every topic a worker running every service consumes, upstream before downstream
#: (so one pass of :func:`drained` usually suffices; it repeats until nothing moved).
WORKER_TOPICS: tuple[str, ...] = tuple(dict.fromkeys([
    CREATED, INVENTORY_REQUESTS, INVENTORY_ANSWERS, InventoryReserved.topic(), InventoryRejected.topic(),
    OrderCancelled.topic(), PAID, *(t for s in SERVICES for t in s.retry_topics(_TIERS)), SENT,
    *(t for s in SERVICES for t in s.sources),
]))


# -- sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    mode: str
    # worker-kill-storm
    storm_orders: int  # each an OrderCreated and an OrderPaid
    storm_rate: float  # orders/s
    storm_kills: int
    # seconds after the worker is ready again; at least 2.5: a restarted worker's first
    # commit comes ~1 s after ready (broker_commit_interval), and each life must commit
    storm_kill_after: tuple[float, float]
    # relay-kill
    relay_orders: int
    relay_kills: int
    relay_kill_after: tuple[float, float]
    # broker-restart
    restart_orders: int
    restarts: int
    restart_after: tuple[float, float]  # seconds into the burst (then after the previous restart)
    restart_downtime: float
    # poison-flood
    poison_good: int
    poison_bad: int
    poison_rate: float  # records/s
    # leader-kill (3-node Apache Kafka)
    leader_orders: int
    leader_rate: float
    leader_kills: int
    leader_every: float  # seconds between kills
    leader_down: float  # seconds a killed node stays down
    # eos-kill-storm (1-node Apache Kafka, PROCESSING_GUARANTEE=exactly_once)
    eos_orders: int
    eos_rate: float
    eos_kills: int
    eos_kill_after: tuple[float, float]  # seconds after the worker is ready again
    # orders per second over HTTP (relay-kill, broker-restart)
    order_rate: float
    # seconds the gateway stub takes to answer (a real SMS gateway is not instant; the
    # wider the window between the call and the commit, the more a kill can replay)
    gateway_delay: float
    # bounds
    drain_timeout: float


SHORT = Sizes(
    mode="short",
    storm_orders=4500, storm_rate=150, storm_kills=2, storm_kill_after=(2.5, 5.0),
    relay_orders=3000, relay_kills=3, relay_kill_after=(0.5, 2.0),
    restart_orders=3000, restarts=1, restart_after=(2.0, 6.0), restart_downtime=2.0,
    poison_good=2000, poison_bad=2000, poison_rate=2000,
    leader_orders=6000, leader_rate=100, leader_kills=2, leader_every=20.0, leader_down=5.0,
    eos_orders=3000, eos_rate=150, eos_kills=2, eos_kill_after=(8.0, 12.0),
    order_rate=300, gateway_delay=0.05, drain_timeout=120,
)

LONG = Sizes(
    mode="long",
    storm_orders=20_000, storm_rate=200, storm_kills=6, storm_kill_after=(2.5, 6.0),
    relay_orders=20_000, relay_kills=10, relay_kill_after=(0.5, 4.0),
    restart_orders=10_000, restarts=2, restart_after=(3.0, 8.0), restart_downtime=3.0,
    poison_good=20_000, poison_bad=20_000, poison_rate=4000,
    leader_orders=20_000, leader_rate=150, leader_kills=6, leader_every=20.0, leader_down=5.0,
    eos_orders=20_000, eos_rate=200, eos_kills=6, eos_kill_after=(8.0, 12.0),
    order_rate=400, gateway_delay=0.05, drain_timeout=600,
)

MODES = {"short": SHORT, "long": LONG}


# -- results -----------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    produced: int = 0
    lost: int = 0
    gateway_duplicates: int = 0
    sent_duplicates: int = 0
    #: events whose effects were repeated (per key: the larger of its gateway and
    #: NotificationSent repeats), not counting those a wiped worker forgot
    repeated: int = 0
    #: gateway calls for orders already notified before a broker restart wiped the
    #: worker's memory (broker-restart only; not against the budget)
    forgotten: int = 0
    #: SIGKILLs of a worker: the duplicate budget is worker_kills × batch_size
    worker_kills: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    dead_lettered: int = 0
    drain_seconds: float | None = None
    faults: str = ""
    faults_done: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: failed checks other than "lost" (e.g. a poison record not dead-lettered once)
    failed_checks: list[str] = field(default_factory=list)
    error: str | None = None
    #: scenario-specific numbers the tests look at
    details: dict[str, Any] = field(default_factory=dict)
    #: PROCESSING_GUARANTEE=exactly_once: ``repeated`` counts derived events a
    #: read_committed reader sees more than once per order, and their budget is 0
    exactly_once: bool = False

    @property
    def duplicates(self) -> int:
        return self.gateway_duplicates + self.sent_duplicates

    @property
    def duplicate_budget(self) -> int:
        return 0 if self.exactly_once else self.worker_kills * self.batch_size

    @property
    def over_budget(self) -> bool:
        return self.repeated > self.duplicate_budget

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost == 0 and not self.over_budget and not self.failed_checks

    def budget_text(self) -> str:
        rule = ("exactly_once: derived events read_committed" if self.exactly_once
                else f"{self.worker_kills} worker kills × BATCH_SIZE {self.batch_size}")
        text = f"{self.repeated} repeated events / budget {self.duplicate_budget} ({rule})"
        if self.forgotten:
            text += f"; {self.forgotten} forgotten with the broker"
        return text + (" OVER BUDGET" if self.over_budget else "")

    def line(self) -> str:
        drain = f"{self.drain_seconds:.1f}s" if self.drain_seconds is not None else "not drained"
        status = "OK" if self.ok else "FAIL"
        text = (f"{self.scenario:<18} {status:<4} produced={self.produced} lost={self.lost} "
                f"duplicate effects={self.duplicates} (gateway {self.gateway_duplicates} + "
                f"NotificationSent {self.sent_duplicates}): {self.budget_text()}; "
                f"dead-lettered={self.dead_lettered} drain={drain} faults={self.faults or '-'} "
                f"run={self.seconds:.0f}s")
        if self.error:
            text += f"\n    error: {self.error}"
        if self.over_budget and self.exactly_once:
            text += (f"\n    failed: {self.repeated} derived events seen more than once by a read_committed "
                     f"reader under exactly_once (budget 0)")
        elif self.over_budget:
            text += (f"\n    failed: {self.repeated} events had their effects repeated, more than "
                     f"{self.worker_kills} worker kills × BATCH_SIZE {self.batch_size} = {self.duplicate_budget}")
        for check in self.failed_checks:
            text += f"\n    failed: {check}"
        for note in self.notes:
            text += f"\n    note: {note}"
        return text


# -- plumbing ----------------------------------------------------------------------------


class Stack:
    """Everything a scenario starts; stopped in reverse order, whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._procs: list[WorkerProcess | OrdersProcess] = []
        self._brokers: list[EmbeddedBroker] = []
        self._gateways: list[GatewayStub] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.kill()
        for broker in reversed(self._brokers):
            with contextlib.suppress(Exception):
                broker.stop()
        for gateway in self._gateways:
            with contextlib.suppress(Exception):
                await gateway.stop()

    async def broker(self, port: int | None = None) -> EmbeddedBroker:
        b = EmbeddedBroker(port)
        self._brokers.append(b)
        await asyncio.to_thread(b.start)
        return b

    async def kafka(self, nodes: int) -> Any:
        from streams.broker import KafkaBroker

        b = KafkaBroker(self.workdir / "kafka", nodes=nodes)
        self._brokers.append(b)
        await asyncio.to_thread(b.start)
        return b

    async def gateway(self, delay: float = 0.0) -> GatewayStub:
        g = GatewayStub(delay=delay)
        self._gateways.append(g)
        return await g.start()

    def worker(self, broker: EmbeddedBroker, name: str, **env: str) -> WorkerProcess:
        w = WorkerProcess(broker.url, self.workdir / f"data-{name}", self.workdir / f"{name}.log", **env)
        self._procs.append(w)
        return w

    def orders(self, command: str, name: str, **env: str) -> OrdersProcess:
        p = OrdersProcess(command, self.workdir / f"{name}.log", **env)
        self._procs.append(p)
        return p

    def background(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        return task


def crash(broker: EmbeddedBroker) -> None:
    """SIGKILL the broker. (A SIGTERM'd Tansu with clients connected keeps serving for
    about 5 s before it exits, which would move the fault past the moment chosen.)"""
    proc = broker.process
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    broker.stop()


async def start_ready(proc: WorkerProcess | OrdersProcess) -> None:
    await asyncio.to_thread(lambda: proc.start().wait_ready())


async def kill_repeatedly(
    proc: WorkerProcess | OrdersProcess, times: int, after: tuple[float, float],
    load: asyncio.Task[Any], result: Result, rng: random.Random,
    before_kill: Callable[[], Awaitable[None]] | None = None,
) -> float:
    """SIGKILL ``proc`` ``times`` times at random moments while ``load`` runs,
    restarting it after each (``before_kill`` runs just before each kill); returns
    the monotonic time of the last kill."""
    last_fault = time.monotonic()
    for _ in range(times):
        await asyncio.sleep(rng.uniform(*after))  # pacing the fault, not waiting for quiet
        if load.done() and load.exception():
            break
        if before_kill is not None:
            await before_kill()
        proc.kill()
        last_fault = time.monotonic()
        result.faults_done += 1
        await start_ready(proc)
    return last_fault


async def finished_at(coro: Awaitable[Any]) -> tuple[Any, float]:
    """``coro``'s result and the monotonic time it finished."""
    value = await coro
    return value, time.monotonic()


async def paced_orders(client: OrdersClient, n: int, rate: float) -> list[str]:
    """Create and pay ``n`` orders over HTTP, starting about ``rate`` per second (the
    client's semaphore bounds how many are in flight); their ids in order."""
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        tasks = []
        for i in range(n):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(client.create_and_pay(session)))
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:
                t.cancel()


async def produce_steady(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes | None]],
    *, rate: float, chunk: int = 50,
) -> float:
    """Produce ``records`` at about ``rate`` per second (acks awaited per chunk);
    returns the monotonic time the last ack arrived."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        started = time.monotonic()
        for n in range(0, len(records), chunk):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            futures = [await producer.send(topic, key=k, value=v) for k, v in records[n:n + chunk]]
            await asyncio.gather(*futures)
        return time.monotonic()
    finally:
        await producer.stop()


def lifecycle(order_id: str, sku: str) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """An order's ``OrderCreated`` (one unit of ``sku``) and ``OrderPaid`` records."""
    return created(order_id, items=[{"sku": sku, "qty": 1}]), paid(order_id)


async def produce_lifecycle(bootstrap: str, orders: Sequence[tuple[str, str]], *, rate: float,
                            chunk: int = 25) -> float:
    """For each (order id, SKU): ``OrderCreated``, then — once acknowledged — its
    ``OrderPaid``, at about ``rate`` orders per second; returns the monotonic time the
    last ack arrived."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        for n in range(0, len(orders), chunk):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pairs = [lifecycle(o, sku) for o, sku in orders[n:n + chunk]]
            await asyncio.gather(*[await producer.send(CREATED, key=k, value=v) for (k, v), _ in pairs])
            await asyncio.gather(*[await producer.send(PAID, key=k, value=v) for _, (k, v) in pairs])
        return time.monotonic()
    finally:
        await producer.stop()


async def seed_stock(bootstrap: str, stock: dict[str, int]) -> None:
    """What ``faust -A streams seed-stock FILE`` sends: a ``set`` command per SKU."""
    await produce_steady(bootstrap, INVENTORY_REQUESTS,
                         [(sku.encode(), json.dumps({"kind": "set", "sku": sku, "qty": qty}).encode())
                          for sku, qty in stock.items()], rate=1e9)


async def wait_effects(gateway: GatewayStub, wanted: set[str], since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until every key in ``wanted`` was accepted by the gateway,
    or None after ``timeout`` seconds of waiting."""
    deadline = time.monotonic() + timeout
    while True:
        if wanted <= gateway.accepted.keys():
            return time.monotonic() - since
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.1)


async def drained(bootstrap: str, topics: Sequence[str] = WORKER_TOPICS, timeout: float = 180.0) -> int:
    """Until the worker's group has committed every record of ``topics`` and no new
    record appeared in them meanwhile (a derived record — a reservation's answer, a
    release — lands in a topic the group also reads). The commit protocol acknowledges
    a record only after its side effects and derived records are done, so then the
    gateway's counts and every topic are final. Returns the records in ``topics``."""
    deadline = time.monotonic() + timeout

    async def ends() -> dict[str, dict[int, int]]:
        return {t: await end_offsets(bootstrap, t) for t in topics}

    before = await ends()
    while True:
        await wait_consumed(bootstrap, topics, timeout=max(1.0, deadline - time.monotonic()))
        after = await ends()
        if after == before:
            return sum(sum(p.values()) for p in after.values())
        before = after


async def outbox_empty(api_url: str, timeout: float) -> dict[str, Any]:
    """Until the order service has no pending outbox row (every row's record acknowledged)."""
    return await wait_for(lambda: outbox_stats(api_url), lambda st: st["pending"] == 0,
                          what="the outbox has no pending row", timeout=timeout, interval=0.2)


def batch_size_of(worker: WorkerProcess) -> int:
    """The worker's BATCH_SIZE: its own environment, else this process's, else the default."""
    value = worker.env.get("BATCH_SIZE") or os.environ.get("BATCH_SIZE")
    return int(value) if value else DEFAULT_BATCH_SIZE


def epoch_of(t: float, boundaries: Sequence[float]) -> int:
    return sum(1 for b in boundaries if t >= b)


def repeated_effects(gateway_times: dict[str, list[float]], sent: Counter[str],
                     boundaries: Sequence[float] = ()) -> tuple[int, int]:
    """(repeated, forgotten) from the gateway's request times per key, the number of
    ``NotificationSent`` records per key and the moments the worker's memory was
    wiped (``boundaries``: broker restarts). Per key, repeated = the larger of its
    gateway calls beyond the first within one memory epoch and its NotificationSent
    records beyond the first; forgotten = epochs with a call beyond the first."""
    repeated = forgotten = 0
    for key in set(gateway_times) | set(sent):
        per_epoch = Counter(epoch_of(t, boundaries) for t in gateway_times.get(key, ()))
        again = sum(n - 1 for n in per_epoch.values())
        forgotten += max(0, len(per_epoch) - 1)
        repeated += max(again, sent.get(key, 0) - 1, 0)
    return repeated, forgotten


def commit_progress(snapshots: Sequence[tuple[int, int]], final: tuple[int, int]) -> list[str]:
    """Failed checks for the group's committed offsets of a topic: ``snapshots`` are
    (committed, end) summed over partitions just before each kill, ``final`` after
    the drain. Each life of the worker must commit something when there was
    something to commit, and in the end everything must be committed."""
    failed = []
    prev = 0
    for n, (done, end) in enumerate(snapshots, 1):
        if prev < end and done <= prev:
            failed.append(f"committed offsets of {PAID} did not advance before kill {n}: {prev} → {done} "
                          f"of {end} records (the worker's life {n} committed nothing)")
        prev = max(prev, done)
    done, end = final
    if done < end:
        failed.append(f"committed offsets of {PAID}: {done} of {end} after the drain")
    return failed


async def read_dlqs(bootstrap: str, topics: Sequence[str] = DLQS) -> list[Consumed]:
    """Every dead letter of ``topics`` (all services' DLQs by default), to their end."""
    out: list[Consumed] = []
    for topic in topics:
        out.extend(await read_topic(bootstrap, topic, timeout=15))
    return out


def count_outcome(result: Result, gateway: GatewayStub, wanted: set[str], sent: list[Consumed] | None,
                  dlq: list[Consumed], *, boundaries: Sequence[float] = ()) -> None:
    """Fill lost / duplicates / repeated / dead-lettered from the gateway,
    NotificationSent and the DLQ. Call it after :func:`drained` (final counts)."""
    lost = wanted - gateway.accepted.keys()
    result.produced = len(wanted)
    result.lost = len(lost)
    if lost:
        result.notes.append(f"no effect for e.g. {sorted(lost)[:5]}")
    result.gateway_duplicates = sum(n - 1 for n in gateway.requests.values() if n > 1)
    stray = set(gateway.requests) - wanted
    if stray:
        result.failed_checks.append(f"{len(stray)} gateway requests for keys that should have no effect, "
                                    f"e.g. {sorted(stray)[:5]}")
    result.dead_lettered = len(dlq)
    per_key: Counter[str] = Counter(r.key.decode() for r in sent or () if r.key is not None)
    result.sent_duplicates = sum(n - 1 for n in per_key.values() if n > 1)
    if sent is not None:
        missing = wanted - per_key.keys() - lost
        if missing:
            result.failed_checks.append(f"{len(missing)} orders had a gateway effect but no NotificationSent, "
                                        f"e.g. {sorted(missing)[:5]}")
    result.repeated, result.forgotten = repeated_effects(gateway.times, per_key, boundaries)
    result.details.update(gateway_requests=sum(gateway.requests.values()), repeated=result.repeated,
                          forgotten=result.forgotten, duplicate_budget=result.duplicate_budget)


async def order_views(worker_url: str, ids: Sequence[str], concurrency: int = 32) -> dict[str, Any]:
    """``GET /orders/{id}`` on the worker for each id: the JSON body, or the HTTP status."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        async def one(order_id: str) -> None:
            async with sem, session.get(f"{worker_url}/orders/{order_id}") as resp:
                out[order_id] = await resp.json() if resp.status == 200 else resp.status
        await asyncio.gather(*(one(i) for i in ids))
    return out


async def stock_views(worker_url: str, skus: Iterable[str]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        out: dict[str, Any] = {}
        for sku in skus:
            async with session.get(f"{worker_url}/inventory/{sku}") as resp:
                out[sku] = await resp.json() if resp.status == 200 else resp.status
        return out


# -- scenarios ---------------------------------------------------------------------------


def timed(scenario: Callable[..., Awaitable[Result]]):
    """Sets the result's ``seconds`` (the scenario's wall time, start-up included)."""

    @functools.wraps(scenario)
    async def run(sizes: Sizes, workdir: Path, rng: random.Random, **options: Any) -> Result:
        started = time.monotonic()
        result = await scenario(sizes, workdir, rng, **options)
        result.seconds = time.monotonic() - started
        return result

    return run


WORKER_ENV = {"park_timeout": "3600"}


#: SKUs of the kill storm's orders, and the stock seeded for each (never runs out).
STORM_SKUS, STORM_STOCK = 8, 1_000_000


async def paid_offsets(bootstrap: str) -> tuple[int, int]:
    """(committed by the worker's group, end) of ``OrderPaid``, summed over partitions."""
    done, ends = await committed(bootstrap, PAID), await end_offsets(bootstrap, PAID)
    return sum(done.values()), sum(ends.values())


async def run_kill_storm(st: Stack, broker: Any, worker: Any, gateway: Any, orders: list[tuple[str, str]],
                         result: Result, rng: random.Random, *, rate: float, kills: int, kill_after: tuple[float, float],
                         drain_timeout: float) -> tuple[list[tuple[int, int]], set[str]]:
    """The kill storm both storms share: stock seeded for ``orders``' SKUs, the lifecycle
    produced at ``rate`` while the worker is SIGKILLed ``kills`` times (the committed and
    end offsets of ``OrderPaid`` recorded before each kill), until every order's gateway
    effect arrived. Returns those snapshots and the order ids."""
    result.batch_size = batch_size_of(worker)
    await start_ready(worker)
    await seed_stock(broker.bootstrap, {sku: STORM_STOCK for sku in Counter(sku for _, sku in orders)})
    feeder = st.background(produce_lifecycle(broker.bootstrap, orders, rate=rate))
    snapshots: list[tuple[int, int]] = []

    async def before_kill() -> None:
        snapshots.append(await paid_offsets(broker.bootstrap))

    last_fault = await kill_repeatedly(worker, kills, kill_after, feeder, result, rng, before_kill=before_kill)
    result.worker_kills = result.faults_done
    produced_at = await feeder
    wanted = {order for order, _ in orders}
    result.drain_seconds = await wait_effects(gateway, wanted, max(produced_at, last_fault), drain_timeout)
    return snapshots, wanted


#: What the kill storms produce and the worker reads, in the order the model is fed them:
#: the stock seed (``inventory.requests``), every ``OrderCreated``, every ``OrderPaid``.
STORM_INPUTS: tuple[str, ...] = (INVENTORY_REQUESTS, CREATED, PAID)
#: Commands on ``inventory.requests`` the inventory service writes itself: its internal
#: protocol, which the model does in itself (``Reference`` models ``set`` from outside only).
OWN_COMMANDS = frozenset({"reserve", "release"})

Read = Callable[[str], Awaitable[list[Consumed]]]


def _command_kind(value: bytes | None) -> Any:
    try:
        obj = json.loads(value) if value else None
    except ValueError:
        return None
    return obj.get("kind") if isinstance(obj, dict) else None


async def storm_model(read: Read) -> tuple[Reference, dict[str, int]]:
    """The reference model (harness/reference.py, the differential test's) fed what the
    storm produced, read back from the broker as the worker read it (``read``: a topic's
    records in offset order per partition — under exactly_once a ``read_committed``
    reader), topic by topic in :data:`STORM_INPUTS`' order, then settled. The inventory
    service's own commands on ``inventory.requests`` (:data:`OWN_COMMANDS`) are left out:
    the model reserves in itself. Returns the model and the records fed per topic.

    Feeding the topics one after the other is one legal interleaving; the storm's outcome
    does not depend on which (stock never runs out, every order is created and paid once,
    and parking makes the status chain independent of arrival order)."""
    ref = Reference()
    fed: dict[str, int] = {}
    for topic in STORM_INPUTS:
        records = [r for r in await read(topic)
                   if topic != INVENTORY_REQUESTS or _command_kind(r.value) not in OWN_COMMANDS]
        for r in records:
            ref.feed(topic, r.key, r.value)
        fed[topic] = len(records)
    ref.settle()
    return ref, fed


def model_mismatches(ref: Reference, views: dict[str, Any], stock: dict[str, Any]) -> list[str]:
    """The worker's tables against the model's, key by key (harness.reference's
    :func:`compare_order` and :func:`compare_stock`, as in the differential test): every
    order either knows (``views``: ``GET /orders/{id}`` bodies, or the HTTP status
    answered instead — 404 is "no such order") and every SKU either knows (``stock``:
    ``GET /inventory/{sku}`` bodies or statuses)."""
    out: list[str] = []
    for oid in sorted(set(views) | set(ref.orders)):
        if oid not in views:
            out.append(f"{oid}: in the model, not read from the worker")
            continue
        got = views[oid]
        if isinstance(got, int) and got != 404:
            out.append(f"{oid}: the worker answered HTTP {got}")
            continue
        out += compare_order(oid, ref.view(oid), got if isinstance(got, dict) else None)
    for sku in sorted(set(stock) | set(ref.stock)):
        if sku not in stock:
            out.append(f"stock {sku}: in the model, not read from the worker")
            continue
        out += compare_stock(sku, ref.stock.get(sku, {"available": 0, "reserved": 0}), stock[sku])
    return out


async def check_storm_tables(result: Result, worker_url: str, views: dict[str, Any], not_notified: set[str],
                             skus: Counter[str], model: tuple[Reference, dict[str, int]], dlq: list[Any]) -> None:
    """Both kill storms' checks on the worker's tables: the orders not NOTIFIED (noted:
    the caller counts them lost), every order RESERVED, each SKU's stock the seed minus
    its orders, the tables against the reference model (``model``: it and the records
    it was fed), and no dead letter."""
    if not_notified:
        result.notes.append(f"{len(not_notified)} orders not NOTIFIED on the worker, e.g. "
                            f"{[(i, views[i] if not isinstance(views[i], dict) else views[i]['status']) for i in sorted(not_notified)[:3]]}")
    not_reserved = [i for i, v in views.items() if isinstance(v, dict) and v["reservation"] != "RESERVED"]
    if not_reserved:
        result.failed_checks.append(f"{len(not_reserved)} orders not RESERVED, e.g. {not_reserved[:5]}")
    stock = await stock_views(worker_url, skus)
    wrong_stock = {sku: v for sku, v in stock.items()
                   if v != {"sku": sku, "available": STORM_STOCK - skus[sku], "reserved": skus[sku]}}
    if wrong_stock:
        result.failed_checks.append(f"stock of {len(wrong_stock)} SKUs is not seed − orders: "
                                    f"{dict(list(wrong_stock.items())[:3])} (expected reserved {dict(skus)})")
    check_against_model(result, *model, views, stock)
    if dlq:
        result.failed_checks.append(f"{len(dlq)} dead letters, e.g. "
                                    f"{[(d.topic, d.key, d.headers.get('x-dlq-reason')) for d in dlq[:3]]}")


def check_against_model(result: Result, ref: Reference, fed: dict[str, int], views: dict[str, Any],
                        stock: dict[str, Any]) -> list[str]:
    """The storms' comparison with the reference model: a mismatch fails the scenario
    (its count and first ones in the failed checks); the notes say what was compared."""
    mismatches = model_mismatches(ref, views, stock)
    result.details.update(model_mismatches=len(mismatches), model_fed=fed,
                          model_orders=len(set(views) | set(ref.orders)), model_skus=len(set(stock) | set(ref.stock)))
    result.notes.append(
        f"reference model (harness/reference.py) fed the {sum(fed.values()):,} records the worker read ("
        + ", ".join(f"{n:,} {t}" for t, n in fed.items()) + f"): {result.details['model_orders']:,} orders "
        f"(GET /orders/{{id}}) and {result.details['model_skus']} SKUs (GET /inventory/{{sku}}) compared key by "
        f"key, {len(mismatches):,} mismatches")
    if mismatches:
        result.failed_checks.append(f"{len(mismatches):,} mismatches between the worker's tables and the reference "
                                    f"model, first: {'; '.join(mismatches[:5])}")
    return mismatches


@timed
async def worker_kill_storm(sizes: Sizes, workdir: Path, rng: random.Random) -> Result:
    result = Result("worker-kill-storm", faults=f"{sizes.storm_kills}× SIGKILL worker")
    orders = [(f"ks-{i}", f"sku-{i % STORM_SKUS}") for i in range(sizes.storm_orders)]
    ids = [o for o, _ in orders]
    skus = Counter(sku for _, sku in orders)
    async with Stack(workdir) as st:
        broker = await st.broker()
        gateway = await st.gateway(sizes.gateway_delay)
        worker = st.worker(broker, "worker", notifier_url=gateway.url, **WORKER_ENV)  # every service
        snapshots, wanted = await run_kill_storm(st, broker, worker, gateway, orders, result, rng,
                                                 rate=sizes.storm_rate, kills=sizes.storm_kills,
                                                 kill_after=sizes.storm_kill_after, drain_timeout=sizes.drain_timeout)
        await drained(broker.bootstrap, timeout=sizes.drain_timeout)
        final = await paid_offsets(broker.bootstrap)
        sent = await read_topic(broker.bootstrap, SENT)
        dlq = await read_dlqs(broker.bootstrap)
        count_outcome(result, gateway, wanted, sent, dlq)

        # Every order: NOTIFIED and RESERVED on the worker, exactly as often in stock as ordered.
        views = await order_views(worker.url, ids)
        not_notified = {i for i, v in views.items() if not isinstance(v, dict) or v["status"] != "NOTIFIED"}
        no_sent = wanted - {r.key.decode() for r in sent if r.key is not None}
        lost = (wanted - gateway.accepted.keys()) | not_notified | no_sent
        result.lost = len(lost)
        model = await storm_model(lambda topic: read_topic(broker.bootstrap, topic))
        await check_storm_tables(result, worker.url, views, not_notified, skus, model, dlq)
        result.failed_checks.extend(commit_progress(snapshots, final))

        result.details.update(worker_starts=worker.starts, commits_before_kills=snapshots, commit_final=final,
                              not_notified=len(not_notified), no_sent=len(no_sent))
        result.notes.append(f"{sizes.storm_rate:.0f} orders/s (OrderCreated + OrderPaid, all services); "
                            f"worker started {worker.starts} times")
        result.notes.append("committed/end offsets of OrderPaid before each kill: "
                            + ", ".join(f"{d}/{e}" for d, e in snapshots) + f"; after the drain {final[0]}/{final[1]}")
    return result


@timed
async def relay_kill(sizes: Sizes, workdir: Path, rng: random.Random) -> Result:
    result = Result("relay-kill", faults=f"{sizes.relay_kills}× SIGKILL relay")
    async with Stack(workdir) as st:
        broker = await st.broker()
        gateway = await st.gateway(sizes.gateway_delay)
        common = {"kafka_broker": broker.url, "database_url": f"sqlite:///{workdir / 'orders.db'}"}
        api = st.orders("serve", "api", relay_enabled="false", **common)
        relay = st.orders("relay", "relay", relay_id="chaos-relay", relay_batch_size="200", **common)
        worker = st.worker(broker, "worker", notifier_url=gateway.url, **WORKER_ENV)
        await start_ready(api)
        await start_ready(relay)
        await start_ready(worker)
        client = OrdersClient(api.url, concurrency=16)
        started = time.monotonic()
        burst = st.background(finished_at(paced_orders(client, sizes.relay_orders, sizes.order_rate)))
        last_fault = await kill_repeatedly(relay, sizes.relay_kills, sizes.relay_kill_after, burst, result, rng)
        ids, produced_at = await burst
        result.notes.append(f"{len(ids)} orders in {produced_at - started:.1f}s over HTTP; "
                            f"relay started {relay.starts} times")
        since = max(produced_at, last_fault)
        wanted = set(ids)
        result.drain_seconds = await wait_effects(gateway, wanted, since, sizes.drain_timeout)
        stats = await outbox_empty(api.url, timeout=sizes.drain_timeout)  # every row's record is in the broker
        await drained(broker.bootstrap, timeout=sizes.drain_timeout)  # … and the worker is done with them
        paid_records = await read_topic(broker.bootstrap, PAID, expect=len(ids))
        result.notes.append(f"{len(paid_records) - len(ids)} OrderPaid records published twice (relay killed "
                            f"between ack and mark); outbox {stats}")
        sent = await read_topic(broker.bootstrap, SENT)
        dlq = await read_dlqs(broker.bootstrap)
        result.worker_kills, result.batch_size = 0, batch_size_of(worker)
        count_outcome(result, gateway, wanted, sent, dlq)
        result.details["relay_starts"] = relay.starts
        result.details["republished"] = len(paid_records) - len(ids)
    return result


async def diagnose(broker: EmbeddedBroker, worker: WorkerProcess, missing: set[str]) -> list[str]:
    """Where the orders without effect are: on the OrderPaid topic? read by the worker?"""
    records = await read_topic(broker.bootstrap, PAID, timeout=20)
    keys = {i.encode() for i in missing}
    mine = [r for r in records if r.key in keys]
    per_partition = Counter(r.partition for r in records)
    missing_at = sorted((r.partition, r.offset) for r in mine)[:6]
    text = await asyncio.to_thread(worker.metrics)
    statuses = {s: metric_value(text, "event_processed_total", service="notifications", status=s)
                for s in ("success", "duplicate", "retry", "dead_letter")}
    lag = [line for line in text.splitlines() if line.startswith("consumer_lag") and PAID in line]
    return [(f"diagnosis: {PAID} holds {len(records)} records {dict(sorted(per_partition.items()))}, "
             f"{len(mine)} of them for the {len(missing)} orders without effect (partition, offset: "
             f"{missing_at}); worker notifications {statuses}; {'; '.join(lag)}")]


#: reconcile's exit codes (streams/ops/commands.py): clean, a failure, mismatches found.
RECONCILE_CLEAN, RECONCILE_FAILED, RECONCILE_MISMATCHES = 0, 1, 3


def reconcile_cli(env: dict[str, str], *args: str, timeout: float = 180) -> tuple[int, str]:
    """``faust -A streams reconcile ARGS``: (exit code, stdout). Exit 0 (clean) and 3
    (mismatches found — with ``--repair`` too: the next run tells whether the repair
    converged) are answers; anything else (1: the database or worker could not be
    asked; 2: usage) raises."""
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams", "reconcile", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode not in (RECONCILE_CLEAN, RECONCILE_MISMATCHES):
        raise RuntimeError(f"reconcile exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.returncode, done.stdout


def reconcile_summary(out: str) -> str:
    return ", ".join(line.strip() for line in out.splitlines()
                     if "orders checked" in line or line.startswith("repair:"))


async def create_event_topics(bootstrap: str, partitions: int = 4) -> None:
    """The event topics, as the relay creates them at its first start."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t.topic(), partitions, 1) for t in EVENT_TYPES])
    finally:
        await admin.close()


async def restart_with_topics(st: Stack, port: int, orders: OrdersProcess) -> EmbeddedBroker:
    """A new, empty broker on ``port``, with the event topics created before the order
    service's relay can reach it.

    Tansu acknowledges records sent to a topic that does not exist (a producer with
    metadata from the old broker does exactly that) and then loses or misplaces them:
    measured here, the relay's acknowledged rows never reached the worker, and records
    written after the topic was created were skipped by the worker's consumer. A real
    broker keeps its topics, and the relay creates topics only at its first round. So
    the order service is paused (SIGSTOP) for the fraction of a second it takes to
    start the broker and create the topics, then resumed (SIGCONT).
    """
    assert orders.proc is not None
    os.killpg(orders.proc.pid, signal.SIGSTOP)
    try:
        broker = await st.broker(port)
        await create_event_topics(broker.bootstrap)
    finally:
        os.killpg(orders.proc.pid, signal.SIGCONT)
    return broker


@timed
async def broker_restart(sizes: Sizes, workdir: Path, rng: random.Random) -> Result:
    """Orders flow while the broker is SIGKILLed and replaced by an empty one on the same
    port (the worker wiped with it); then the system settles, reconcile repairs what the
    lost broker swallowed, and a second reconcile says it converged."""
    result = Result("broker-restart", faults=f"{sizes.restarts}× broker SIGKILL + empty broker on the same port")
    port = free_port()
    db_url = f"sqlite:///{workdir / 'orders.db'}"
    async with Stack(workdir) as st:
        broker = await st.broker(port)
        gateway = await st.gateway(sizes.gateway_delay)
        common = {"kafka_broker": broker.url, "database_url": db_url}
        api = st.orders("serve", "api", **common)  # API + relay in one process
        worker = st.worker(broker, "worker", notifier_url=gateway.url, database_url=db_url, **WORKER_ENV)
        result.batch_size = batch_size_of(worker)
        await start_ready(api)
        await start_ready(worker)
        client = OrdersClient(api.url, concurrency=16)
        started = time.monotonic()
        burst = st.background(finished_at(paced_orders(client, sizes.restart_orders, sizes.order_rate)))
        broker, last_fault, wiped = await restart_brokers(sizes, rng, result, st, port, broker, api, worker,
                                                          gateway, client, burst, started)
        ids, produced_at = await burst
        bad = Counter(s for s in client.statuses if s not in (201, 202))
        if bad:
            result.failed_checks.append(f"order service answered {dict(bad)} during the burst")
        since = max(produced_at, last_fault)
        wanted = set(ids)
        swallowed = await settle_after_restarts(sizes, result, broker, api, worker, gateway, wanted)
        env = {"DATABASE_URL": db_url, "KAFKA_BROKER": broker.url,
               "DATA_DIR": str(workdir / "reconcile"), "PYTHONUNBUFFERED": "1"}
        await reconcile_after_restarts(sizes, result, env, broker, api, worker, gateway, wanted, swallowed, since)
        await count_last_broker(result, broker, gateway, wanted, wiped)
    return result


async def restart_brokers(sizes: Sizes, rng: random.Random, result: Result, st: Stack, port: int,
                          broker: EmbeddedBroker, api: OrdersProcess, worker: WorkerProcess, gateway: GatewayStub, client: OrdersClient,
                          burst: asyncio.Task[Any], started: float) -> tuple[EmbeddedBroker, float, list[float]]:
    """``sizes.restarts`` times during the burst: SIGKILL the broker, kill and wipe the
    worker, start an empty broker on the same port, start the worker again. Returns the
    last broker, when the last fault came, and when the worker's memory went each time."""
    last_fault = time.monotonic()
    wiped: list[float] = []  # when the worker's memory went (gateway request times are monotonic)
    for n in range(sizes.restarts):
        await asyncio.sleep(rng.uniform(*sizes.restart_after))  # pacing the fault
        if burst.done():
            result.notes.append(f"restart {n + 1} came after the burst had ended")
        effects_before = len(gateway.accepted)
        await asyncio.to_thread(crash, broker)
        last_fault = time.monotonic()
        result.faults_done += 1
        # The new broker is empty (memory store): the worker's table changelogs and
        # offsets are gone, so its local state must go too (Faust would refuse it).
        worker.kill()
        result.worker_kills += 1
        wiped.append(time.monotonic())
        shutil.rmtree(worker.data_dir, ignore_errors=True)
        await asyncio.sleep(sizes.restart_downtime)  # the outage itself
        broker = await restart_with_topics(st, port, api)
        result.notes.append(f"broker SIGKILLed {last_fault - started:.1f}s into the burst "
                            f"({len(client.statuses) // 2} orders answered, {effects_before} effects)")
        await start_ready(worker)
    return broker, last_fault, wiped


async def settle_after_restarts(sizes: Sizes, result: Result, broker: EmbeddedBroker, api: OrdersProcess,
                                worker: WorkerProcess, gateway: GatewayStub, wanted: set[str]) -> set[str]:
    """Check 1: the restarted system converges on its own — every outbox row's record is
    in the new broker, and the worker has committed everything in its topics. Returns
    the paid orders still without an effect (the lost broker swallowed them)."""
    settle_started = time.monotonic()
    await outbox_empty(api.url, timeout=sizes.drain_timeout)
    await drained(broker.bootstrap, timeout=sizes.drain_timeout)
    result.details["settled_seconds"] = time.monotonic() - settle_started
    result.notes.append(f"settled {result.details['settled_seconds']:.1f}s after the burst (outbox empty, "
                        f"the worker's group committed every record on the new broker)")
    swallowed = wanted - gateway.accepted.keys()
    result.details["lost_before_reconcile"] = len(swallowed)
    on_new = await read_topic(broker.bootstrap, PAID)
    processed = metric_value(await asyncio.to_thread(worker.metrics), "event_processed_total",
                             service="notifications")
    stranded = {r.key for r in on_new} & {i.encode() for i in swallowed}
    result.details["stranded"] = len(stranded)
    if stranded:  # on the broker and consumed, yet no effect: not the broker's memory loss
        result.failed_checks.append(f"{len(stranded)} orders' OrderPaid reached the new broker but had "
                                    f"no effect before reconcile, e.g. {sorted(stranded)[:3]}")
    result.notes.append(f"{len(swallowed)} paid orders without effect before reconcile (acknowledged "
                        f"by the old broker, not yet read by the worker)")
    result.notes.append(f"new broker: {len(on_new)} OrderPaid before reconcile, worker processed "
                        f"{processed:.0f}")
    return swallowed


async def reconcile_after_restarts(sizes: Sizes, result: Result, env: dict[str, str], broker: EmbeddedBroker,
                                   api: OrdersProcess, worker: WorkerProcess, gateway: GatewayStub, wanted: set[str],
                                   swallowed: set[str], since: float) -> None:
    """Checks 2 and 3: what an operator does after losing a broker — reconcile from the
    source of truth with ``--repair`` — then the next run tells whether it converged."""
    code, out = await asyncio.to_thread(reconcile_cli, env, "--sla", "0", "--repair", "--worker-url", worker.url)
    result.details["reconcile_exit"] = code
    result.notes.append(f"reconcile (exit {code}): {reconcile_summary(out)}")
    if swallowed and code != RECONCILE_MISMATCHES:
        result.failed_checks.append(f"reconcile exited {code} although {len(swallowed)} orders had no effect")
    result.drain_seconds = await wait_effects(gateway, wanted, since, sizes.drain_timeout)
    await outbox_empty(api.url, timeout=sizes.drain_timeout)  # the repair's rows are in the broker
    await drained(broker.bootstrap, timeout=sizes.drain_timeout)
    if wanted - gateway.accepted.keys():
        result.notes.extend(await diagnose(broker, worker, wanted - gateway.accepted.keys()))
    code, out = await asyncio.to_thread(reconcile_cli, env, "--sla", "0", "--worker-url", worker.url)
    result.details["reconcile_again_exit"] = code
    if code != RECONCILE_CLEAN:
        result.failed_checks.append(f"reconcile after the repair exited {code}: {reconcile_summary(out)}")


async def count_last_broker(result: Result, broker: EmbeddedBroker, gateway: GatewayStub, wanted: set[str],
                            wiped: list[float]) -> None:
    """Outcome, duplicates and repeated effects, from the last broker's topics only: the
    first brokers' NotificationSent died with them."""
    sent = await read_topic(broker.bootstrap, SENT)
    dlq = await read_dlqs(broker.bootstrap)
    count_outcome(result, gateway, wanted, None, dlq, boundaries=wiped)
    per_key = Counter(r.key.decode() for r in sent if r.key is not None)
    result.sent_duplicates = sum(n - 1 for n in per_key.values() if n > 1)
    # Only the last broker's NotificationSent: with gateway calls of the last epoch.
    result.repeated, result.forgotten = repeated_effects(gateway.times, per_key, wiped)
    result.details.update(repeated=result.repeated, forgotten=result.forgotten)
    if dlq:
        result.failed_checks.append(f"{len(dlq)} dead letters, e.g. "
                                    f"{[(d.topic, d.key, d.headers.get('x-dlq-reason')) for d in dlq[:3]]}")


#: kind → (make (key, value) for number i, expected x-dlq-reason)
POISON_KINDS: dict[str, tuple[Callable[[int], tuple[bytes | None, bytes | None]], str]] = {
    "not-json": (lambda i: (f"px-{i}".encode(), b"\x00\xffnot json %d{" % i), "decode_error"),
    "wrong-types": (lambda i: (f"pw-{i}".encode(), json.dumps(
        {"order_id": f"pw-{i}", "user_id": 7, "amount": "lots", "version": "v1"}).encode()), "validation_error"),
    "unknown-version": (lambda i: (f"pv-{i}".encode(), json.dumps(
        {"order_id": f"pv-{i}", "user_id": "u-7", "amount": 1, "version": "v9"}).encode()), "unknown_version"),
    "empty-value": (lambda i: (f"pe-{i}".encode(), b""), "decode_error"),
    "no-key": (lambda i: (None, paid(f"pk-{i}")[1]), "validation_error"),
}


def poison_records(n: int) -> list[tuple[bytes | None, bytes | None, str, str]]:
    """``n`` poison records, the kinds in turn: (key, value, kind, expected reason)."""
    kinds = list(POISON_KINDS.items())
    out = []
    for i in range(n):
        kind, (make, reason) = kinds[i % len(kinds)]
        key, value = make(i)
        out.append((key, value, kind, reason))
    return out


@timed
async def poison_flood(sizes: Sizes, workdir: Path, rng: random.Random) -> Result:
    result = Result("poison-flood", faults=f"{sizes.poison_bad} poison records")
    good = [f"pf-{i}" for i in range(sizes.poison_good)]
    poison = poison_records(sizes.poison_bad)
    mixed: list[tuple[bytes | None, bytes | None]] = [paid(i) for i in good] + [(k, v) for k, v, _, _ in poison]
    rng.shuffle(mixed)
    async with Stack(workdir) as st:
        broker = await st.broker()
        gateway = await st.gateway(sizes.gateway_delay)
        worker = st.worker(broker, "worker", notifier_url=gateway.url, **WORKER_ENV)
        await start_ready(worker)
        produced_at = await produce_steady(broker.bootstrap, PAID, mixed, rate=sizes.poison_rate, chunk=100)
        result.faults_done = len(poison)
        wanted = set(good)
        result.drain_seconds = await wait_effects(gateway, wanted, produced_at, sizes.drain_timeout)
        await drained(broker.bootstrap, timeout=sizes.drain_timeout)
        sent = await read_topic(broker.bootstrap, SENT)
        dlq = await read_topic(broker.bootstrap, DLQ, expect=len(poison))
        result.worker_kills, result.batch_size = 0, batch_size_of(worker)
        count_outcome(result, gateway, wanted, sent, dlq)

        expected = {(k, v or b""): (kind, reason) for k, v, kind, reason in poison}
        seen = Counter((d.key, d.value or b"") for d in dlq)
        missing = [expected[x][0] for x in expected if seen[x] == 0]
        twice = [expected[x][0] for x in expected if seen[x] > 1]
        unexpected = [x for x in seen if x not in expected]
        wrong_reason = [
            (expected[(d.key, d.value or b"")][0], d.headers.get("x-dlq-reason", b"").decode())
            for d in dlq
            if (d.key, d.value or b"") in expected
            and d.headers.get("x-dlq-reason", b"").decode() != expected[(d.key, d.value or b"")][1]
        ]
        not_once = [k for k in good if gateway.requests[k] != 1]
        result.details.update(poison=len(poison), poison_missing=len(missing), poison_twice=len(twice),
                              dlq_unexpected=len(unexpected), wrong_reason=len(wrong_reason),
                              good_not_once=len(not_once))
        if missing:
            result.failed_checks.append(f"{len(missing)} poison records not dead-lettered: {Counter(missing)}")
        if twice:
            result.failed_checks.append(f"{len(twice)} poison records dead-lettered more than once: {Counter(twice)}")
        if unexpected:
            result.failed_checks.append(f"{len(unexpected)} dead letters that are not poison records")
        if wrong_reason:
            result.failed_checks.append(f"{len(wrong_reason)} dead letters with the wrong reason: "
                                        f"{Counter(wrong_reason).most_common(3)}")
        if not_once:
            result.failed_checks.append(f"{len(not_once)} good events without exactly one gateway request")
        kinds = Counter(kind for _, _, kind, _ in poison)
        result.notes.append("poison: " + ", ".join(f"{n} {k}" for k, n in kinds.items())
                            + f"; {'every one' if not (missing or twice) else 'NOT every one'} "
                              f"dead-lettered exactly once")
        if worker.proc is None or worker.proc.poll() is not None:
            result.failed_checks.append("the worker exited during the flood")
    return result


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition → the node id leading it now (-1: none), from fresh metadata."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        return {p: client.cluster.leader_for_partition(TopicPartition(topic, p)) or -1
                for p in client.cluster.partitions_for_topic(topic) or ()}
    finally:
        await client.close()


def spans(answers: Sequence[tuple[float, int, bytes]]) -> list[tuple[float, float, str]]:
    """Periods of non-200 ``/health`` answers: (start, end, the first answer's body)."""
    out: list[tuple[float, float, str]] = []
    start: tuple[float, str] | None = None
    for t, status, body in answers:
        if status != 200 and start is None:
            start = (t, body.decode(errors="replace")[:200])
        elif status == 200 and start is not None:
            out.append((start[0], t, start[1]))
            start = None
    if start is not None:
        out.append((start[0], answers[-1][0], start[1]))
    return out


@timed
async def leader_kill(sizes: Sizes, workdir: Path, rng: random.Random) -> Result:
    """Apache Kafka, 3 KRaft nodes; every topic the worker creates at replication factor
    3 with ``min.insync.replicas=2``; the full lifecycle under load while the leader of
    ``OrderPaid`` partition 0 (every partition takes the same share) is SIGKILLed every
    ``leader_every`` seconds and started again ``leader_down`` seconds later."""
    from harness.worker import HealthProbe

    result = Result("leader-kill", faults=f"{sizes.leader_kills}× SIGKILL partition leader (3 Kafka nodes)")
    orders = [(f"lk-{i}", f"sku-{i % STORM_SKUS}") for i in range(sizes.leader_orders)]
    ids = [o for o, _ in orders]
    skus = Counter(sku for _, sku in orders)
    async with Stack(workdir) as st:
        kafka = await st.kafka(3)
        gateway = await st.gateway(sizes.gateway_delay)
        worker = st.worker(kafka, "worker", notifier_url=gateway.url, topic_replication_factor="3",
                           broker_loss_timeout="10", **WORKER_ENV)
        result.batch_size = batch_size_of(worker)
        await start_ready(worker)
        await seed_stock(kafka.bootstrap, {sku: STORM_STOCK for sku in skus})
        kills: list[tuple[float, int]] = []
        with HealthProbe(worker.url, interval=0.2) as probe:
            feeder = st.background(produce_lifecycle(kafka.bootstrap, orders, rate=sizes.leader_rate))
            for _ in range(sizes.leader_kills):
                try:
                    await asyncio.wait_for(asyncio.shield(feeder), sizes.leader_every)
                    break  # the load is over: no more kills
                except asyncio.TimeoutError:
                    pass
                node = (await leaders(kafka.bootstrap, PAID)).get(0, -1)
                if node < 1:
                    result.notes.append("partition 0 of OrderPaid had no leader when a kill was due")
                    continue
                kills.append((asyncio.get_running_loop().time(), node))  # the gateway's clock
                await asyncio.to_thread(kafka.kill_node, node)
                await asyncio.sleep(sizes.leader_down)
                await asyncio.to_thread(kafka.restart_node, node)
            result.faults_done = len(kills)
            produced_at = await feeder
            result.drain_seconds = await wait_effects(gateway, set(ids), produced_at, sizes.drain_timeout)
            await drained(kafka.bootstrap, timeout=sizes.drain_timeout)
        # Budget: a failover can repeat at most the batch in flight (its sends are retried).
        result.worker_kills = len(kills)
        sent = await read_topic(kafka.bootstrap, SENT)
        dlq = await read_dlqs(kafka.bootstrap)
        count_outcome(result, gateway, set(ids), sent, dlq)
        views = await order_views(worker.url, ids)
        not_notified = {i for i, v in views.items() if not isinstance(v, dict) or v["status"] != "NOTIFIED"}
        result.lost = len((set(ids) - gateway.accepted.keys()) | not_notified)
        if not_notified:
            result.notes.append(f"{len(not_notified)} orders not NOTIFIED, e.g. {sorted(not_notified)[:3]}")
        if worker.starts != 1 or worker.proc is None or worker.proc.poll() is not None:
            result.failed_checks.append(f"the worker was restarted or died (starts: {worker.starts})")
        if dlq:
            result.failed_checks.append(f"{len(dlq)} dead letters, e.g. "
                                        f"{[(d.topic, d.key, d.headers.get('x-dlq-reason')) for d in dlq[:3]]}")
        # Per kill: seconds until the gateway accepted a call again, and /health's answer.
        outages = []
        for t, node in kills:
            after = [x for ts in gateway.times.values() for x in ts if x > t]
            outages.append(round(min(after) - t, 1) if after else None)
        unhealthy = spans(probe.answers)
        result.details.update(kills=[(round(t, 1), n) for t, n in kills], outage_s=outages,
                              health_non_200=[(round(b - a, 1), why) for a, b, why in unhealthy])
        result.notes.append(f"{sizes.leader_rate:.0f} orders/s, every service, RF 3, min.insync.replicas 2; "
                            f"killed node per kill: {[n for _, n in kills]}; seconds until the gateway took a "
                            f"call again after each kill: {outages}")
        result.notes.append("/health non-200 spans (seconds, first answer): "
                            + ("; ".join(f"{b - a:.1f}s {why!r}" for a, b, why in unhealthy) or "none"))
        if unhealthy and probe.answers[-1][1] != 200:
            result.failed_checks.append("/health did not turn 200 again by itself")
    return result


# -- eos-kill-storm ----------------------------------------------------------------------

#: The topics that carry each order's derived events in the kill storm: one
#: NotificationSent, and one inventory answer (reserved, or rejected) per order.
EOS_DERIVED: tuple[str, ...] = (SENT, InventoryReserved.topic(), InventoryRejected.topic())


async def read_isolated(bootstrap: str, topic: str, isolation_level: str, timeout: float = 60.0) -> list[Consumed]:
    """Every record of ``topic`` as a reader with ``isolation_level`` sees it, from the
    beginning to the end at the start of the read (for ``read_committed`` the last
    stable offset: records of aborted transactions and transaction markers skipped;
    ``read_uncommitted`` sees the aborted records too)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=isolation_level,
                                fetch_max_wait_ms=100, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    out: list[Consumed] = []
    try:
        deadline = time.monotonic() + timeout
        tps = await _partitions(consumer, topic, deadline)
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end ({isolation_level}) in {timeout} s")
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(Consumed(r.topic, r.partition, r.offset, r.key, r.value,
                                    {k: v for k, v in (r.headers or ())}, r.timestamp) for r in recs)
        return out
    finally:
        await consumer.stop()


async def committed_behind(bootstrap: str, topics: Sequence[str], group: str = GROUP) -> dict[str, int]:
    """Per partition (``topic:partition``) of ``topics`` that the group is not done
    with: the committed records a ``read_committed`` reader finds at or after the
    group's committed offset (-1: a transaction is still open there).

    Under exactly_once the group's offset is the last processed record + 1 (the
    engine's ``send_offsets_to_transaction``), and a topic the worker itself writes in
    transactions ends with a commit marker, so "committed offset = end offset" never
    holds there; "nothing committed after the committed offset" does."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed", fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    out: dict[str, int] = {}
    try:
        for topic in topics:
            tps = await _partitions(consumer, topic, time.monotonic() + 10)
            if not tps:
                continue
            done = await committed(bootstrap, topic, group)
            stable = await consumer.end_offsets(tps)
            high = await end_offsets(bootstrap, topic)
            todo = []
            for tp in tps:
                if stable[tp] < high.get(tp.partition, 0):
                    out[f"{topic}:{tp.partition}"] = -1
                elif done.get(tp.partition, 0) < stable[tp]:
                    todo.append(tp)
            if not todo:
                continue
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, done.get(tp.partition, 0))
            deadline = time.monotonic() + 30
            while any([await consumer.position(tp) < stable[tp] for tp in todo]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}: {todo} not read to their last stable offsets {stable} in 30 s")
                for tp, recs in (await consumer.getmany(timeout_ms=200)).items():
                    if recs:
                        key = f"{topic}:{tp.partition}"
                        out[key] = out.get(key, 0) + len(recs)
        return out
    finally:
        await consumer.stop()


async def drained_committed(bootstrap: str, topics: Sequence[str] = WORKER_TOPICS, timeout: float = 180.0,
                            interval: float = 0.5) -> int:
    """:func:`drained` for a worker under exactly_once: until no topic it reads holds an
    open transaction or a committed record after the group's committed offset
    (:func:`committed_behind`), and no record appeared meanwhile. Returns the
    records (high watermarks) in ``topics``."""
    deadline = time.monotonic() + timeout

    async def ends() -> dict[str, dict[int, int]]:
        return {t: await end_offsets(bootstrap, t) for t in topics}

    before = await ends()
    while True:
        behind = await committed_behind(bootstrap, topics)
        if not behind:
            after = await ends()
            if after == before:
                return sum(sum(p.values()) for p in after.values())
            before = after
        elif time.monotonic() > deadline:
            raise AssertionError(f"the worker's group is not done after {timeout}s: {dict(list(behind.items())[:8])} "
                                 "(records after its committed offset; -1: an open transaction)")
        else:
            await asyncio.sleep(interval)  # polling a condition, not waiting for quiet


def derived_once(wanted: set[str], seen: dict[str, list[Consumed]]) -> dict[str, Any]:
    """Each order of ``wanted`` must have exactly one NotificationSent and exactly one
    inventory answer (InventoryReserved or InventoryRejected) in ``seen`` (topic →
    records, as a read_committed reader saw them). Returns ``lost`` (orders missing
    one), ``repeated`` (records beyond the first per order and kind), ``stray``
    (records keyed by no wanted order) and per-topic counts."""
    kinds = {SENT: "sent", InventoryReserved.topic(): "inventory", InventoryRejected.topic(): "inventory"}
    per: dict[str, Counter[str]] = {"sent": Counter(), "inventory": Counter()}
    stray = 0
    for topic, records in seen.items():
        for r in records:
            key = r.key.decode() if r.key is not None else None
            if key not in wanted:
                stray += 1
                continue
            per[kinds[topic]][key] += 1
    lost = {o for o in wanted if per["sent"][o] == 0 or per["inventory"][o] == 0}
    repeated = sum(n - 1 for c in per.values() for n in c.values() if n > 1)
    return {"lost": lost, "repeated": repeated, "stray": stray,
            "records": {t: len(rs) for t, rs in seen.items()},
            "repeated_keys": sorted({k for c in per.values() for k, n in c.items() if n > 1})[:5]}


async def eos_checks(result: Result, worker: Any, gateway: Any, ids: list[str], skus: Counter[str],
                     once: dict[str, Any], dlq: list[Any], snapshots: list[tuple[int, int]],
                     final: tuple[int, int], gateway_budget: int, model: tuple[Reference, dict[str, int]]) -> set[str]:
    """``eos-kill-storm``'s checks on the worker's view (status, reservation, stock, and
    its tables against ``model``: the reference model and the records it was fed), the
    committed dead letters, the gateway's repeats and the commit progress; the orders not
    NOTIFIED."""
    wanted = set(ids)
    views = await order_views(worker.url, ids)
    not_notified = {i for i, v in views.items() if not isinstance(v, dict) or v["status"] != "NOTIFIED"}
    lost = (wanted - gateway.accepted.keys()) | not_notified | once["lost"]
    result.lost = len(lost)
    if once["lost"]:
        result.notes.append(f"{len(once['lost'])} orders without their NotificationSent or inventory answer "
                            f"(read_committed), e.g. {sorted(once['lost'])[:5]}")
    if once["repeated"]:
        result.notes.append(f"derived events repeated (read_committed), e.g. {once['repeated_keys']}")
    if once["stray"]:
        result.notes.append(f"{once['stray']} derived records for no order of the storm")
    await check_storm_tables(result, worker.url, views, not_notified, skus, model, dlq)
    if result.gateway_duplicates > gateway_budget:
        result.failed_checks.append(f"{result.gateway_duplicates} gateway calls repeated, more than "
                                    f"{result.worker_kills} kills × BATCH_SIZE {result.batch_size}")
    result.failed_checks.extend(commit_progress(snapshots, final))

    return not_notified


def eos_notes(result: Result, sizes: Sizes, worker: Any, guarantee: str, wanted: set[str],
              once: dict[str, Any], committed_view: dict[str, Any], everything: dict[str, Any],
              snapshots: list[tuple[int, int]], final: tuple[int, int], not_notified: set[str],
              gateway_budget: int) -> None:
    """``eos-kill-storm``'s details and notes: what each isolation level saw."""
    aborted = {t: len(everything[t]) - len(committed_view[t]) for t in EOS_DERIVED}
    result.details.update(worker_starts=worker.starts, commits_before_kills=snapshots, commit_final=final,
                          not_notified=len(not_notified), read_committed=once["records"],
                          read_uncommitted={t: len(rs) for t, rs in everything.items()}, aborted_seen=aborted,
                          derived_lost=len(once["lost"]), derived_repeated=once["repeated"],
                          stray=once["stray"], guarantee=guarantee)
    short = {SENT: "NotificationSent", InventoryReserved.topic(): "InventoryReserved",
             InventoryRejected.topic(): "InventoryRejected"}
    result.notes.append(f"PROCESSING_GUARANTEE={guarantee}, 1 Kafka node, {sizes.eos_rate:.0f} orders/s "
                        f"(OrderCreated + OrderPaid, all services); worker started {worker.starts} times")
    result.notes.append("read_committed: " + ", ".join(f"{once['records'][t]:,} {short[t]}" for t in EOS_DERIVED)
                        + f" for {len(wanted):,} orders; read_uncommitted also sees "
                        + ", ".join(f"{aborted[t]:,} {short[t]}" for t in EOS_DERIVED)
                        + " of aborted transactions")
    result.notes.append(f"gateway (at least once, same Idempotency-Key): {result.gateway_duplicates:,} calls "
                        f"repeated, budget {result.worker_kills} kills × BATCH_SIZE {result.batch_size} = "
                        f"{gateway_budget:,}")
    result.notes.append("committed/end offsets of OrderPaid before each kill: "
                        + ", ".join(f"{d}/{e}" for d, e in snapshots) + f"; after the drain {final[0]}/{final[1]}")


@timed
async def eos_kill_storm(sizes: Sizes, workdir: Path, rng: random.Random, *,
                         guarantee: str = "exactly_once") -> Result:
    """``worker-kill-storm`` on a 1-node Apache Kafka with ``PROCESSING_GUARANTEE=
    exactly_once``: the full lifecycle, every service, the worker SIGKILLed every
    ~10 s and restarted on its data dir. Bound: a read_committed reader of every
    derived topic sees each order's derived events exactly once — 0 lost, 0 repeated
    (not kills × BATCH_SIZE). The SMS gateway stays at least once (same idempotency
    key): its repeats are bounded by kills × BATCH_SIZE, as under at_least_once.
    ``guarantee="at_least_once"`` runs the same storm without transactions (how the
    check was seen failing: derived events repeat)."""
    result = Result("eos-kill-storm", faults=f"{sizes.eos_kills}× SIGKILL worker (Kafka, {guarantee})",
                    exactly_once=True)
    orders = [(f"eos-{i}", f"sku-{i % STORM_SKUS}") for i in range(sizes.eos_orders)]
    ids = [o for o, _ in orders]
    skus = Counter(sku for _, sku in orders)
    async with Stack(workdir) as st:
        kafka = await st.kafka(1)
        gateway = await st.gateway(sizes.gateway_delay)
        worker = st.worker(kafka, "worker", notifier_url=gateway.url, processing_guarantee=guarantee,
                           **WORKER_ENV)  # every service
        snapshots, wanted = await run_kill_storm(st, kafka, worker, gateway, orders, result, rng,
                                                 rate=sizes.eos_rate, kills=sizes.eos_kills,
                                                 kill_after=sizes.eos_kill_after, drain_timeout=sizes.drain_timeout)
        await drained_committed(kafka.bootstrap, timeout=sizes.drain_timeout)
        final = await paid_offsets(kafka.bootstrap)
        committed_view = {t: await read_isolated(kafka.bootstrap, t, "read_committed") for t in EOS_DERIVED}
        everything = {t: await read_isolated(kafka.bootstrap, t, "read_uncommitted") for t in EOS_DERIVED}
        # dead letters of aborted batches are not letters (the dlq tools read committed ones)
        dlq = [r for t in DLQS for r in await read_isolated(kafka.bootstrap, t, "read_committed", timeout=15)]
        count_outcome(result, gateway, wanted, committed_view[SENT], dlq)
        gateway_budget = result.worker_kills * result.batch_size
        once = derived_once(wanted, committed_view)
        result.repeated = once["repeated"] + once["stray"]
        result.details.update(repeated=result.repeated, duplicate_budget=result.duplicate_budget)
        model = await storm_model(lambda topic: read_isolated(kafka.bootstrap, topic, "read_committed"))

        not_notified = await eos_checks(result, worker, gateway, ids, skus, once, dlq, snapshots, final,
                                        gateway_budget, model)
        eos_notes(result, sizes, worker, guarantee, wanted, once, committed_view, everything, snapshots, final,
                  not_notified, gateway_budget)
    return result


Scenario = Callable[[Sizes, Path, random.Random], Awaitable[Result]]

SCENARIOS: dict[str, Scenario] = {
    "worker-kill-storm": worker_kill_storm,
    "relay-kill": relay_kill,
    "broker-restart": broker_restart,
    "poison-flood": poison_flood,
    "leader-kill": leader_kill,
    "eos-kill-storm": eos_kill_storm,
}


async def run_scenario(name: str, sizes: Sizes, workdir: Path, seed: int) -> Result:
    """Run one scenario; a crash becomes a failed row (with the traceback's last line)."""
    started = time.monotonic()
    try:
        return await SCENARIOS[name](sizes, workdir / name, random.Random(f"{seed}:{name}"))
    except Exception as exc:  # noqa: BLE001 - a crashed scenario is a failed row, the others still run
        traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        return Result(name, error=f"{type(exc).__name__}: {first}", seconds=time.monotonic() - started)


# -- docs/reliability.md -----------------------------------------------------------------

INTRO = """\
# Reliability: chaos runs

Generated by `python -m bench.chaos` (`bench/chaos.py`); the rows below are
replaced by every run, and each table's first line names the commit it ran (with
the files that differed from it, if any). Each scenario starts its own embedded
broker on a free port, real processes (`faust -A streams worker` running every
consuming service — notifications, order-state, inventory — and `python -m orders
serve|relay`) and an SMS gateway stub that counts requests per `Idempotency-Key`,
injects one kind of fault, and counts the effects:

| scenario | what it does |
|---|---|
| `worker-kill-storm` | the full lifecycle at a steady rate — `OrderCreated`, then `OrderPaid`, per order, stock seeded for every SKU; the worker is SIGKILLed at random points K times (each at least 2.5 s after it was ready again) and restarted on its own data dir after each. Checks: every order `NOTIFIED` and `RESERVED` on the worker (`GET /orders/{id}`), exactly one `NotificationSent` per order or a counted duplicate, stock = seed − orders, no dead letter, the group's committed offsets of `OrderPaid` move forward in every life of the worker (recorded before each kill), and the worker's tables equal the reference model's (`harness/reference.py`, the differential test's model), fed the records the worker read — the stock seed, every `OrderCreated` and `OrderPaid` — and compared key by key: each order's state (`GET /orders/{id}`: status, reservation, version, history, parked) and each SKU's stock (`GET /inventory/{sku}`); one mismatch fails the scenario and the first ones are in its notes |
| `relay-kill` | order service API (`RELAY_ENABLED=false`, SQLite) + a separate relay (fixed `RELAY_ID`) + worker; orders created and paid over HTTP while the relay is SIGKILLed K times |
| `broker-restart` | order service with its relay + worker; the broker is SIGKILLed mid-burst and a new, empty one started on the same port (event topics created before the relay reaches it); the worker is restarted with a wiped `DATA_DIR`; once the outbox has nothing pending and the worker has committed everything on the new broker, `faust -A streams reconcile --sla 0 --repair` (see the caveat below), then a second `reconcile` that must exit 0 |
| `leader-kill` | Apache Kafka with 3 KRaft nodes (`streams/broker/kafka.py`), the worker with `TOPIC_REPLICATION_FACTOR=3` (every topic it creates: `min.insync.replicas=2`); the full lifecycle at a steady rate while the node leading `OrderPaid` partition 0 is SIGKILLed every ~20 s and started again 5 s later. Checks: every order `NOTIFIED`, nothing dead-lettered, repeats within kills × `BATCH_SIZE` (a failover repeats at most the batch in flight), the worker never restarted, and `/health` non-200 only in spans that end by themselves (each span's first answer is in the notes) |
| `poison-flood` | good `OrderPaid` interleaved with as many poison records (not JSON, wrong types, unknown version, empty value, no key); every poison record must be in `notifications.dlq` exactly once with the right reason, every good event must have exactly one gateway request |
| `eos-kill-storm` | `worker-kill-storm` on one Apache Kafka node with `PROCESSING_GUARANTEE=exactly_once` (every service, the full lifecycle at a steady rate), the worker SIGKILLed every ~10 s (8–12 s after it was ready again) and restarted on its own data dir. Bound: **0 repeated** — a `read_committed` reader of `events.notification.sent.v1`, `events.inventory.reserved.v1` and `events.inventory.rejected.v1` must see exactly one `NotificationSent` and one inventory answer per order (0 lost, 0 repeated, nothing for other keys), not kills × `BATCH_SIZE`. Also: every order `NOTIFIED` and `RESERVED` on the worker, stock = seed − reserved, no dead letter, committed offsets of `OrderPaid` move forward in every life. The SMS gateway stays at least once (same `Idempotency-Key`): its repeats are in the notes, bounded by kills × `BATCH_SIZE`. The notes also give what a `read_uncommitted` reader sees on top (the records of aborted transactions). The worker's tables must equal the reference model's, as in `worker-kill-storm` (the model fed what a `read_committed` reader sees): **0 mismatches** |

Nothing waits for a quiet period. A scenario is over when conditions hold: every
expected effect was accepted by the gateway, the order service's outbox has no
pending row (`GET /outbox/stats`), and the worker's consumer group has committed
every record in every topic it reads, with no new record appearing meanwhile (under
exactly_once: no committed record after the group's offset and no open transaction
in any of them — the group's offset is the last processed record + 1, short of the
commit marker that ends a topic the worker writes in transactions). The
commit protocol (`streams/engine/pipeline.py`) acknowledges a record only after its
gateway call and derived records are done, so from then on the counts are final.

Columns: **produced** — distinct orders/events that should have an effect;
**lost** — of those, no request accepted by the gateway stub (`worker-kill-storm`:
also not `NOTIFIED` on the worker, or without `NotificationSent`); **duplicate
effects** — gateway requests beyond the first per key + `NotificationSent` records
beyond the first per key; **repeated / budget** — events whose effects were repeated
(per key the larger of its gateway and `NotificationSent` repeats: one replayed event
repeats both) against the budget *worker kills × `BATCH_SIZE`* (500 by default): the
commit protocol repeats at most one batch per crash, so a scenario that kills no
worker may repeat nothing. Above the budget the scenario fails, as it does on a
loss. `eos-kill-storm` has its own bound: its **repeated** are derived events a
`read_committed` reader sees more than once per order, and the budget is 0 (each
batch's derived records, state and input offsets are one Kafka transaction, so a
killed batch is aborted and read again; its **duplicate effects** column still counts
gateway calls, which stay at least once). **dead-lettered** — records in the services' DLQs (`poison-flood`:
`notifications.dlq`); **drain** — seconds from the later of the last fault and the
end of production until every expected effect was seen at the gateway (it includes
the restarted process's start-up and group rejoin, ~10–20 s for a worker here; for
`broker-restart` also the reconcile). The gateway stub answers 200 after 50 ms (a
real gateway is not instant either; the window between a call and its commit is
what a kill replays). Duplicates are the price of at-least-once delivery: each
carries the same `Idempotency-Key`, which a real gateway turns into a no-op. The run
exits non-zero when a scenario lost anything, went over its duplicate budget, failed
one of its own checks, or crashed.

**The broker caveat.** The embedded broker (Tansu, memory store) keeps everything in
memory: when it stops, every topic, committed offset and table changelog is gone,
and the records it had acknowledged are lost with it. So `broker-restart` does not
show that the broker is durable — it is not — and the worker must be restarted with
a wiped `DATA_DIR` (its tables' changelogs are gone and Faust would refuse its old
local state). Effects are counted at the gateway stub, so those from before the
restart still count. What the scenario does, step by step:

1. orders are created and paid over HTTP at a steady rate; the broker is SIGKILLed
   mid-burst (a SIGTERM'd Tansu keeps serving connected clients for ~5 s, which
   would move the fault), and the worker is SIGKILLed and its `DATA_DIR` wiped;
2. after a short outage (the order service keeps answering 201/202), a new broker
   starts on the same port. The order service is paused (SIGSTOP) for the fraction
   of a second it takes to start it and create the event topics, then resumed.
   Without that, the relay's producer (metadata from the old broker) sends to topics
   that do not exist yet, Tansu *acknowledges* those records, and they never reach
   the worker — measured here: 1,325 acknowledged `OrderPaid` records gone, and after
   the topics were created the worker's consumer skipped records written later. A
   real broker keeps its topics;
3. the worker starts on the wiped data dir; once the outbox has nothing pending and
   the worker's group has committed every record on the new broker, paid orders
   still without effect are those whose `OrderPaid` the old broker had acknowledged
   but the worker had not read (the notes give the number). An `OrderPaid` that *is*
   on the new broker without an effect fails the scenario;
4. `faust -A streams reconcile --sla 0 --repair` (the order service's database is
   the source of truth; exit 3: mismatches found, which is expected here) re-publishes
   what the workers' view lacks. The wiped worker no longer knows the orders from
   before the restart, so reconcile re-publishes those too: most of this scenario's
   duplicate effects come from the repair, each with the order's `Idempotency-Key`.
   They are counted as *forgotten with the broker* (a second call for an order the
   worker had notified before its memory was wiped), not against the budget.
   `NotificationSent` duplicates are counted on the last broker only. When everything
   has drained again, a second `reconcile --sla 0` must exit 0 (converged).

On a real Kafka cluster (replication 3, `acks=all`) a broker restart loses no
acknowledged record and needs none of this.

Run it (from the repository root, in the virtualenv):

```sh
python -m bench.chaos --short                       # every scenario, small sizes (a few minutes on 2 cores)
python -m bench.chaos --long                        # bigger: tens of thousands of events, more faults
python -m bench.chaos --short --scenario relay-kill # one scenario (repeatable option)
```

`tests/fault/test_chaos.py` (markers `kafka`, `slow`) runs the short version of each
scenario and fails on any loss, on repeated events above the budget, and on every
scenario's own checks; `tests/fault/test_chaos_checks.py` shows, without a broker,
that each of those checks fails when it should.
"""

COLUMNS = ("scenario", "date", "produced", "lost", "duplicate effects (gateway + NotificationSent)",
           "repeated / budget (worker kills × BATCH_SIZE)", "dead-lettered", "drain (s)", "faults", "run (s)",
           "notes")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_row(result: Result, date: str) -> str:
    drain = f"{result.drain_seconds:.1f}" if result.drain_seconds is not None else "not drained"
    notes = list(result.notes)
    if result.error:
        notes.insert(0, f"CRASHED: {result.error}")
    notes[:0] = [f"FAILED: {c}" for c in result.failed_checks]
    if result.over_budget:
        notes.insert(0, f"FAILED: {result.repeated:,} repeated events, over the budget of "
                        f"{result.duplicate_budget:,}")
    rule = ("exactly_once, read_committed" if result.exactly_once
            else f"{result.worker_kills} × {result.batch_size}")
    budget = (f"{result.repeated:,} / {result.duplicate_budget:,} ({rule})"
              + (f"; {result.forgotten:,} forgotten with the broker" if result.forgotten else ""))
    cells = [
        f"`{result.scenario}`", date, f"{result.produced:,}", f"**{result.lost:,}**",
        f"{result.duplicates:,} ({result.gateway_duplicates:,} + {result.sent_duplicates:,})",
        budget, f"{result.dead_lettered:,}", drain, result.faults, f"{result.seconds:.0f}", "; ".join(notes),
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _markers(mode: str) -> tuple[str, str]:
    return f"<!-- chaos-results:{mode} -->", f"<!-- /chaos-results:{mode} -->"


def _split_row(line: str) -> list[str]:
    """The cells of a Markdown table row (escaped ``\\|`` stays inside its cell)."""
    return re.split(r"(?<!\\)\|", line.strip().strip("|"))


def parse_doc(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """mode → (its "last run" line, scenario → table row) from an existing document."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for mode in MODES:
        begin, end = _markers(mode)
        m = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, re.DOTALL)
        if not m:
            continue
        last, rows = "", {}
        for line in m.group(1).splitlines():
            if line.startswith(("Last run:", "Latest run:")):
                last = line
            cell = re.match(r"\| `([a-z-]+)` \|", line)
            # rows of an older table layout are dropped (they lack today's columns and checks)
            if cell and cell.group(1) in SCENARIOS and len(_split_row(line)) == len(COLUMNS):
                rows[cell.group(1)] = line
        out[mode] = (last, rows)
    return out


def render_doc(tables: dict[str, tuple[str, dict[str, str]]]) -> str:
    parts = [INTRO, "## Results\n"]
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
    for mode in MODES:
        begin, end = _markers(mode)
        last, rows = tables.get(mode, ("", {}))
        parts.append(f"### `--{mode}`\n")
        parts.append(begin)
        if rows:
            parts.append((last + "\n") if last else "")
            parts.append(header)
            parts.extend(rows[name] for name in SCENARIOS if name in rows)
        elif last:
            parts.append(f"No run with the current columns and checks yet. {last.rstrip('.')}, "
                         f"had an older layout (its rows were dropped).")
        else:
            parts.append("No run yet.")
        parts.append(end + "\n")
    return "\n".join(parts)


def update_doc(path: Path, results: Sequence[Result], sizes: Sizes, date: str, last_run: str) -> None:
    old = path.read_text() if path.exists() else ""
    tables = parse_doc(old)
    _, rows = tables.get(sizes.mode, ("", {}))
    rows = dict(rows)
    for r in results:
        rows[r.scenario] = table_row(r, date)
    tables[sizes.mode] = (last_run, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_doc(tables))


# -- command line ------------------------------------------------------------------------


def revision() -> str:
    """The checked-out commit; when tracked files differ from it, ``+changes to`` and
    which (the results document itself aside)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = sorted(line[3:].strip() for line in status.splitlines()
                     if line[3:].strip() != str(DEFAULT_DOC.relative_to(ROOT)))
    if not changed:
        return f"`{head}`"
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    return f"`{head}` +changes to {', '.join(changed[:5])}{more}"


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}"


async def run_all(names: Iterable[str], sizes: Sizes, workdir: Path, seed: int) -> list[Result]:
    results = []
    for name in names:
        print(f"--- {name} ({sizes.mode}) ...", flush=True)
        result = await run_scenario(name, sizes, workdir, seed)
        print(result.line(), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--short", dest="mode", action="store_const", const="short",
                      help="small sizes: each scenario well under a minute (default)")
    size.add_argument("--long", dest="mode", action="store_const", const="long",
                      help="big sizes: tens of thousands of events, more faults")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="run only this scenario (repeatable); default: all")
    parser.add_argument("--out", type=Path, default=DEFAULT_DOC,
                        help="results document to write/update (default: docs/reliability.md)")
    parser.add_argument("--no-doc", action="store_true", help="print the results only")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where logs and data go (default: a temporary directory, kept on failure)")
    args = parser.parse_args(argv)

    sizes = MODES[args.mode or "short"]
    names = args.scenario or list(SCENARIOS)
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="order-streams-chaos-"))
    started = time.monotonic()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench.chaos --{sizes.mode}: {', '.join(names)}; seed {seed}; logs in {workdir}", flush=True)

    results = asyncio.run(run_all(names, sizes, workdir, seed))
    total = time.monotonic() - started

    print(f"\nbench.chaos --{sizes.mode} ({total:.0f}s, seed {seed}, {machine()}):")
    for r in results:
        print(r.line())
    if any(r.scenario == "broker-restart" for r in results):
        print("note: the embedded broker is memory-only; a restarted broker is empty (topics, offsets, "
              "changelogs, acknowledged records gone). broker-restart counts effects at the gateway stub "
              "and repairs from the order service's database with reconcile.")
    if not args.no_doc:
        cmd = "python -m bench.chaos --" + sizes.mode + "".join(f" --scenario {n}" for n in args.scenario or ())
        last_run = (f"Latest run: {date}, `{cmd}`, {total:.0f} s in all, seed {seed}, "
                    f"commit {revision()}, {machine()}.")
        update_doc(args.out, results, sizes, date, last_run)
        print(f"results written to {args.out}")
    failed = [r.scenario for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)} (logs kept in {workdir})", file=sys.stderr)
        return 1
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
