"""A worker restarted on its data dir with its wall clock stepped (libfaketime) changes
no state when the orders' events are replayed (issue 25, item 1; the rule is
streams/engine/streamtime.py).

One worker's data dir lives through five lives: the first with the true clock (orders
created and reserved, OrderPaid parked for orders never created, a canary parked per
later life on a partition of its own), then one each with the clock 10 minutes ahead,
10 minutes behind, 400 days ahead and 400 days behind. In each stepped life every event
is replayed, and then:

- nothing is dead-lettered early: ``order-state.dlq`` holds exactly the canaries due
  so far. A canary is parked at an old stream time (its record stamped an hour ago, on
  a partition nothing else reaches; a later record there, 250 s after it, keeps it
  short of ``PARK_TIMEOUT``); a fresh record on its partition makes it due in stream
  time, so its letter is also the proof that the worker ran its timeouts after the
  replay (the condition the test waits for, instead of a quiet period). With the clock
  400 days behind, that fresh record counts at most 60 s past the stored stream time
  (rule 4 of streamtime), which the 250 s record brings within reach;
- no stock is reserved twice: every SKU's stock is what it was after the first life;
- no order has two answers: one ``InventoryReserved`` or ``InventoryRejected`` per
  order over all lives, and its state unchanged.

Seen failing on the code before the fix (c6a3939^): the life 10 minutes ahead
dead-lettered all 12 parked OrderPaid (and the canaries not yet due); run with only the
400-days-ahead life, it also reserved stock again (two SKUs at 9 reserved instead of 5)
and answered every order twice.
"""

from __future__ import annotations

import asyncio
import glob
import json
import time
import uuid

import pytest

from streams.engine.keys import key_partition
from streams.events import InventoryRejected, InventoryReserved, OrderCancelled, OrderCreated, OrderPaid
from streams.registry import INVENTORY_ANSWERS, INVENTORY_REQUESTS
from tables.inventory import StockCommand
from harness.events import cancelled, created, paid, with_event_id
from harness.kafka import create_topic, produce, read_topic, wait_consumed
from harness.worker import http_get

pytestmark = pytest.mark.kafka

PARTITIONS = 8
CANARY_PARTITIONS = range(4)  # one per stepped life; orders live on partitions 4–7
STEPS = ("+10m", "-10m", "+400d", "-400d")
DLQ = "order-state.dlq"
SKUS = [f"s-{i}" for i in range(4)]
STOCK = {sku: 9 for sku in SKUS}


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert found, "libfaketime missing: scripts/ensure-system-packages installs Debian's faketime"
    return found[0]


def ids_on(prefix: str, partitions, n: int) -> list[str]:
    """``n`` ids of the form ``<prefix>-<i>`` whose partition is in ``partitions``."""
    out, i = [], 0
    while len(out) < n:
        if key_partition(f"{prefix}-{i}".encode(), PARTITIONS) in partitions:
            out.append(f"{prefix}-{i}")
        i += 1
    return out


def one_on(prefix: str, partition: int) -> str:
    return ids_on(f"{prefix}{partition}", {partition}, 1)[0]


def event(record: tuple[bytes, bytes], name: str) -> tuple[bytes, bytes]:
    """The same event id in every replay."""
    return with_event_id(record, uuid.uuid5(uuid.NAMESPACE_URL, name))


async def views(worker, paths: list[str]) -> dict[str, dict]:
    def fetch() -> dict[str, dict]:
        out = {}
        for path in paths:
            code, body = http_get(f"{worker.url}{path}")
            out[path] = json.loads(body) if code == 200 else {"http": code}
        return out

    return await asyncio.to_thread(fetch)


async def letters(bootstrap: str) -> list[str]:
    return sorted((r.key or b"").decode() for r in await read_topic(bootstrap, DLQ))


async def wait_letters(bootstrap: str, want: set[str], timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        got = await letters(bootstrap)
        if want <= set(got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.3)


@pytest.mark.needs("libfaketime")
async def test_a_restart_with_the_clock_stepped_either_way_changes_no_state(broker, worker_factory):
    orders = ids_on("o", {4, 5, 6, 7}, 20)
    parked = ids_on("p", {4, 5, 6, 7}, 12)  # paid, never created: parked for PARK_TIMEOUT
    canaries = [one_on("c", p) for p in CANARY_PARTITIONS]
    triggers = [one_on("t", p) for p in CANARY_PARTITIONS]
    nudges = [one_on("n", p) for p in CANARY_PARTITIONS]
    items = {o: [{"sku": SKUS[i % len(SKUS)], "qty": 1 + i % 2}] for i, o in enumerate(orders)}
    created_events = [event(created(o, items=items[o]), f"created-{o}") for o in orders]
    paid_events = [event(paid(p), f"paid-{p}") for p in parked]

    for topic in (OrderCreated.topic(), OrderPaid.topic(), OrderCancelled.topic(), InventoryReserved.topic(),
                  InventoryRejected.topic(), INVENTORY_REQUESTS, INVENTORY_ANSWERS):
        await create_topic(broker.bootstrap, topic, PARTITIONS)
    worker = worker_factory("w1", services="order-state,inventory", topic_partitions=str(PARTITIONS),
                            park_timeout="300", maintenance_interval="0.2",
                            faketime_dont_fake_monotonic="1")
    stock = [(s.encode(), StockCommand(kind="set", sku=s, qty=q).model_dump_json(exclude_none=True).encode())
             for s, q in STOCK.items()]
    await produce(broker.bootstrap, INVENTORY_REQUESTS, stock)
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    for c in canaries:  # parked at an old stream time, each on its own partition
        await produce(broker.bootstrap, OrderPaid.topic(), [event(paid(c), f"paid-{c}")], timestamp_ms=an_hour_ago)
    worker.start()
    await wait_consumed(broker.bootstrap, [OrderPaid.topic(), INVENTORY_REQUESTS])
    for n in nudges:
        await produce(broker.bootstrap, OrderCreated.topic(),
                      [event(created(n, items=[{"sku": "spare", "qty": 1}]), f"created-{n}")],
                      timestamp_ms=an_hour_ago + 250_000)
    await produce(broker.bootstrap, OrderCreated.topic(), created_events)
    await produce(broker.bootstrap, OrderPaid.topic(), paid_events)
    # one pass in stage order: each stage's records are sent before its source is committed
    # (no order here asks for a release: one SKU each)
    stages = [OrderCreated.topic(), OrderPaid.topic(), INVENTORY_REQUESTS, INVENTORY_ANSWERS,
              InventoryReserved.topic(), InventoryRejected.topic()]
    await wait_consumed(broker.bootstrap, stages)
    await asyncio.to_thread(worker.wait_ready)

    paths = [f"/orders/{o}" for o in orders + parked] + [f"/inventory/{s}" for s in SKUS]
    baseline = await views(worker, paths)
    assert all(baseline[f"/orders/{o}"]["reservation"] in ("RESERVED", "REJECTED") for o in orders), baseline
    assert all([p["type"] for p in baseline[f"/orders/{p}"]["parked"]] == ["OrderPaid"] for p in parked)
    assert await letters(broker.bootstrap) == []
    worker.stop()

    worker.env.update(LD_PRELOAD=libfaketime())
    for life, step in enumerate(STEPS):
        worker.env["FAKETIME"] = step
        # the replay: every event of the orders again, as reconcile --repair or the relay would
        await produce(broker.bootstrap, OrderCreated.topic(), created_events)
        await produce(broker.bootstrap, OrderPaid.topic(), paid_events)
        worker.start()
        await wait_consumed(broker.bootstrap, stages)
        await asyncio.to_thread(worker.wait_ready)
        # a fresh record on this life's canary partition: its canary is now due
        await produce(broker.bootstrap, OrderCancelled.topic(), [cancelled(triggers[life])])
        due = set(canaries[:life + 1])
        got = await wait_letters(broker.bootstrap, due)
        assert got == sorted(due), f"clock {step}: dead-lettered {sorted(set(got) - due)} (due: {sorted(due)})"
        now = await views(worker, paths)
        changed = {p: (baseline[p], now[p]) for p in paths if now[p] != baseline[p]}
        assert not changed, f"clock {step}: state changed: {changed}"
        answers = [r.key.decode() for t in (InventoryReserved.topic(), InventoryRejected.topic())
                   for r in await read_topic(broker.bootstrap, t)]
        assert sorted(a for a in answers if a in orders) == sorted(orders), f"clock {step}: answers {sorted(answers)}"
        worker.stop()
