"""The inventory service: reservations per SKU, idempotent per order (issue 6)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from streams.events import InventoryRejected, InventoryReserved, OrderCreated
from harness.events import created
from harness.gateway import GatewayStub
from harness.kafka import produce, read_topic, wait_consumed
from harness.worker import ROOT, http_get, metric_value

pytestmark = pytest.mark.kafka

RESERVED, REJECTED = InventoryReserved.topic(), InventoryRejected.topic()


def seed(broker_url: str, stock: dict[str, int], path) -> None:
    path.write_text(json.dumps(stock))
    result = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams", "seed-stock", str(path)],
        cwd=ROOT, env={**os.environ, "KAFKA_BROKER": broker_url}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"stock set for {len(stock)} SKUs" in result.stdout


async def _internal_records_are_cloudevents(bootstrap: str) -> None:
    """Every record on the internal topics, as the broker holds it, reads as a CloudEvent
    (issue 22 item 5): seed-stock's sets and inventory's commands and answers, one id each."""
    from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

    types = {"set": "inventory.command.v1", "reserve": "inventory.command.v1", "release": "inventory.command.v1",
             "expect": "inventory.expected.v1", "answer": "inventory.answer.v1"}
    ids: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for topic in ("inventory.requests", "inventory.answers"):
        for r in await read_topic(bootstrap, topic):
            ce = from_binary_event(KafkaMessage(headers=r.headers, key=r.key, value=r.value))
            kind = ce.get_data()["kind"]
            kinds[kind] += 1
            assert ce.get_type() == types[kind] and ce.get_dataschema() == f"schemas/{types[kind]}.json"
            assert ce.get_source() == ("/order-streams/seed-stock" if kind == "set" else "/order-streams/inventory")
            ids[ce.get_id()] += 1
    assert set(kinds) == set(types) and set(ids.values()) == {1}, (kinds, ids.most_common(3))


async def test_200_orders_over_20_skus_with_limited_stock(broker, worker_factory, tmp_path):
    rng = random.Random(66)
    skus = [f"s-{i}" for i in range(20)]
    stock = {s: rng.randint(3, 9) for s in skus}
    worker = worker_factory()
    await asyncio.to_thread(worker.start().wait_ready)
    await asyncio.to_thread(seed, broker.url, stock, tmp_path / "stock.json")

    orders = {}
    for i in range(200):
        chosen = rng.sample(skus, rng.choice([1, 1, 2]))
        orders[f"o-{i}"] = [{"sku": s, "qty": rng.randint(1, 2)} for s in chosen]
    events = [created(o, items=items) for o, items in orders.items()]
    await produce(broker.bootstrap, OrderCreated.topic(), events)

    # Every stage done: OrderCreated, the requests (releases of rejected orders'
    # other SKUs included) and the answers all committed.
    stages = [OrderCreated.topic(), "inventory.requests", "inventory.answers"]
    await wait_consumed(broker.bootstrap, stages)
    await wait_consumed(broker.bootstrap, stages)  # the answers' releases, requested by the first pass
    reserved = await read_topic(broker.bootstrap, RESERVED)
    rejected = await read_topic(broker.bootstrap, REJECTED)
    res_ids, rej_ids = Counter(r.key for r in reserved), Counter(r.key for r in rejected)
    assert len(res_ids) + len(rej_ids) == 200 and not set(res_ids) & set(rej_ids)
    assert set(res_ids.values()) <= {1} and set(rej_ids.values()) <= {1}
    assert res_ids and rej_ids, "stock should be short for some orders and enough for others"
    await _internal_records_are_cloudevents(broker.bootstrap)

    held: Counter[str] = Counter()
    for r in reserved:
        for item in json.loads(r.value)["items"]:
            held[item["sku"]] += item["qty"]

    def stock_views() -> dict[str, dict]:
        return {s: json.loads(http_get(f"{worker.url}/inventory/{s}")[1]) for s in skus}

    views = await asyncio.to_thread(stock_views)
    for s in skus:
        assert views[s]["available"] >= 0
        assert views[s]["reserved"] == held[s]
        assert views[s]["available"] + held[s] == stock[s]

    # Replay every OrderCreated: handled once per order (a duplicate sends no command), so nothing changes.
    def duplicates(text: str) -> tuple[float, float]:
        return tuple(metric_value(text, "event_processed_total", service="inventory", type=t, status="duplicate")
                     for t in ("OrderCreated", "StockCommand"))  # type: ignore[return-value]

    before = duplicates(await asyncio.to_thread(worker.metrics))
    await produce(broker.bootstrap, OrderCreated.topic(), events)
    await wait_consumed(broker.bootstrap, stages)
    await wait_consumed(broker.bootstrap, stages)
    after = duplicates(await asyncio.to_thread(worker.metrics))
    assert (after[0] - before[0], after[1] - before[1]) == (len(events), 0)
    again = [*await read_topic(broker.bootstrap, RESERVED), *await read_topic(broker.bootstrap, REJECTED)]
    assert len(again) == 200  # no new inventory event
    assert await asyncio.to_thread(stock_views) == views


async def test_hanging_search_times_out_is_counted_and_never_holds_up_reservations(broker, worker_factory, tmp_path):
    search = await GatewayStub(delay=30).start()
    try:
        worker = worker_factory(search_url=search.url, rpc_timeout="0.2", rpc_max_in_flight="3")
        await asyncio.to_thread(worker.start().wait_ready)
        await asyncio.to_thread(seed, broker.url, {"s-1": 10_000}, tmp_path / "stock.json")
        ids = [f"o-{i}" for i in range(100)]
        await produce(broker.bootstrap, OrderCreated.topic(), [created(i) for i in ids])
        reserved = await read_topic(broker.bootstrap, RESERVED, expect=100)
        assert {r.key.decode() for r in reserved} == set(ids)

        async def counted() -> tuple[float, float, float]:
            text = await asyncio.to_thread(worker.metrics)
            return tuple(metric_value(text, "rpc_calls_total", target="search", outcome=o)  # type: ignore[return-value]
                         for o in ("timeout", "refused", "ok"))

        for _ in range(60):
            timeout, refused, ok = await counted()
            if timeout + refused >= 100:
                break
            await asyncio.sleep(0.5)
        print(f"\nsearch warm-ups: timeout={timeout:.0f} refused={refused:.0f} ok={ok:.0f}")
        assert timeout + refused == 100 and ok == 0
        assert timeout >= 3 and refused > 0
    finally:
        await search.stop()
