"""Inventory handles an order's OrderCreated once, whichever version's topic brought it
(issue 22, item 2: "an event published on both topics under one id is handled once").

Before, its first stage sent the reserve commands and the expectation again for the
second copy and counted it a success; the stock was safe only because the later stages
deduplicate per (SKU, order)."""

from __future__ import annotations

import json

from agents.inventory import (
    INVENTORY_ANSWERS,
    INVENTORY_REQUESTS,
    InventoryService,
    created_key,
)
from streams.engine.pipeline import Pipeline
from streams.engine.records import Record
from streams.engine.routing import RetryPolicy
from streams.engine.testing import NOW, Clock, FakePublisher, MemoryStore
from streams.events import OrderCreated, OrderCreatedV2
from streams.metrics import Metrics
from streams.registry import topics_written
from tables.inventory import ORDERS_TABLE

TTL = 60.0
NOW_MS = int(NOW * 1000)
V1, V2 = OrderCreated.topic(), OrderCreatedV2.topic()
EVENT_ID = "6b2f6f0e-2a43-4d0c-9a55-0d5b4f1b7c11"


def harness() -> tuple[Pipeline, FakePublisher, MemoryStore, Clock]:
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    clock = Clock(NOW)
    service = InventoryService(caller=None, search_url="", decision_ttl=TTL)  # type: ignore[arg-type]
    allowed = topics_written(1) | {"inventory-stock-changelog", "inventory-orders-changelog"}
    pipeline = Pipeline(service, publisher=publisher, store=store, counts=Metrics(), policy=RetryPolicy((1.0,)),
                        allowed=allowed.__contains__, ttl_ms=int(TTL * 1000), clock=clock, monotonic=clock,
                        send_backoff=0.001)
    return pipeline, publisher, store, clock


def created(topic: str, order_id: str, offset: int, ts_ms: int = NOW_MS) -> Record:
    body = {"order_id": order_id, "user_id": "u-1", "items": [{"sku": "s-1", "qty": 1}, {"sku": "s-2", "qty": 2}],
            "amount": "5", "event_id": EVENT_ID, "version": "v1" if topic == V1 else "v2"}
    if topic == V2:
        body["currency"] = "EUR"
    return Record(topic, 0, offset, order_id.encode(), json.dumps(body).encode(), ts_ms)


def sent(publisher: FakePublisher) -> list[tuple[str, bytes]]:
    return [(m.topic, m.key) for t in (INVENTORY_REQUESTS, INVENTORY_ANSWERS) for m in publisher.to(t)]


ONE_ORDER = [(INVENTORY_REQUESTS, b"s-1"), (INVENTORY_REQUESTS, b"s-2"), (INVENTORY_ANSWERS, b"o-1")]


async def test_one_order_on_both_topics_in_one_batch_sends_its_commands_once() -> None:
    pipeline, publisher, _, _ = harness()
    statuses = await pipeline.process([created(V1, "o-1", 0), created(V2, "o-1", 0)])
    assert statuses == {"success": 1, "duplicate": 1}
    assert sent(publisher) == ONE_ORDER


async def test_one_order_on_both_topics_in_two_batches_and_a_replay_send_once() -> None:
    pipeline, publisher, store, _ = harness()
    assert await pipeline.process([created(V2, "o-1", 0)]) == {"success": 1}
    assert await pipeline.process([created(V1, "o-1", 0)]) == {"duplicate": 1}
    assert await pipeline.process([created(V2, "o-1", 0)]) == {"duplicate": 1}  # a replay of the first
    assert sent(publisher) == ONE_ORDER
    assert created_key("o-1") in store.table(ORDERS_TABLE, 0)  # durable: a recovered worker knows it
    assert await pipeline.process([created(V1, "o-2", 1)]) == {"success": 1}  # another order is not held back


async def test_the_marker_expires_after_the_dedup_ttl_in_stream_time() -> None:
    pipeline, _, store, clock = harness()
    await pipeline.process([created(V1, "o-1", 0)])
    later = NOW_MS + int(TTL * 1000)
    clock.now += TTL
    await pipeline.process([created(V1, "o-2", 1, later - 1)])
    await pipeline.maintain([0])
    assert created_key("o-1") in store.table(ORDERS_TABLE, 0)
    await pipeline.process([created(V1, "o-3", 2, later)])
    await pipeline.maintain([0])
    assert created_key("o-1") not in store.table(ORDERS_TABLE, 0)
    assert created_key("o-3") in store.table(ORDERS_TABLE, 0)


def test_the_markers_index_entry_is_rebuilt_from_its_value() -> None:
    service = InventoryService(caller=None, search_url="", decision_ttl=TTL)  # type: ignore[arg-type]
    assert service.index_entries(created_key("o-1"), json.dumps({"t": NOW_MS}).encode()) != []
