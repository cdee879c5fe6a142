"""Two workers in one group: partitions split, GET /orders/{id} right from either."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from streams.events import NotificationSent, OrderCreated, OrderPaid
from harness.events import created, paid
from harness.kafka import produce, read_topic, wait_consumed
from harness.worker import http_get

pytestmark = pytest.mark.kafka


def assigned_paid_partitions(worker) -> set[int]:
    status, body = http_get(f"{worker.url}/health")
    if status != 200:
        return set()
    topic = OrderPaid.topic()
    return {int(a.rsplit(":", 1)[1]) for a in json.loads(body)["assigned"] if a.startswith(topic + ":")}


def wait_for_split(workers, partitions: int = 4, timeout: float = 90) -> list[set[int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = [assigned_paid_partitions(w) for w in workers]
        if all(parts) and set().union(*parts) == set(range(partitions)) and sum(map(len, parts)) == partitions:
            return parts
        time.sleep(0.5)
    raise TimeoutError(f"partitions never split: {[assigned_paid_partitions(w) for w in workers]}")


async def test_two_workers_split_partitions_and_route_order_lookups(broker, worker_factory):
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    await asyncio.to_thread(w1.start().wait_ready)
    await asyncio.to_thread(w2.start().wait_ready)
    parts = await asyncio.to_thread(wait_for_split, [w1, w2])
    assert parts[0].isdisjoint(parts[1])

    ids = [f"o-{i}" for i in range(300)]
    await produce(broker.bootstrap, OrderCreated.topic(), [created(i) for i in ids])
    await produce(broker.bootstrap, OrderPaid.topic(), [paid(i) for i in ids])
    await read_topic(broker.bootstrap, NotificationSent.topic(), expect=len(ids))
    await wait_consumed(broker.bootstrap, [OrderCreated.topic(), OrderPaid.topic(), NotificationSent.topic()])

    def states_from(worker) -> dict[str, dict]:
        out = {}
        for i in ids:
            status, body = http_get(f"{worker.url}/orders/{i}")
            out[i] = json.loads(body) if status == 200 else {"http": status}
        return out

    deadline = time.monotonic() + 60
    while True:
        s1, s2 = await asyncio.to_thread(states_from, w1), await asyncio.to_thread(states_from, w2)
        done = all(s.get("status") == "NOTIFIED" and s["reservation"] != "PENDING" for s in (*s1.values(), *s2.values()))
        if done or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    wrong = {i: (s1[i], s2[i]) for i in ids if s1[i].get("status") != "NOTIFIED" or s2[i].get("status") != "NOTIFIED"}
    assert not wrong, f"{len(wrong)} wrong lookups, e.g. {list(wrong.items())[:2]}"
    # created, paid, notified, and the inventory's answer (no stock seeded: rejected)
    assert all(s1[i]["version"] == 4 and s1[i]["reservation"] == "REJECTED" and s1[i] == s2[i] for i in ids)
    lifecycle = [h["type"] for h in s1[ids[0]]["history"] if not h["type"].startswith("Inventory")]
    assert lifecycle == ["OrderCreated", "OrderPaid", "NotificationSent"]

    status, _ = await asyncio.to_thread(http_get, f"{w1.url}/orders/o-unknown")
    assert status == 404
