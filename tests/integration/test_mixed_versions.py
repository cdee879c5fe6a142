"""OrderCreated v1 and v2 on their topics at once, read by one worker (issue 22).

N orders only on v1, M only on v2 and one order on both topics under the same id:
order-state and inventory each handle N + M + 1 OrderCreated (the one on both is a
duplicate, by order id: inventory sends its commands once) and inventory decides each
order once; a v9 record is dead-lettered as unknown_version.
That every record reaches the handlers as the v2 model is tests/unit/test_upcasting.py's.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from streams.ops import asyncapi
from streams.events import InventoryRejected, InventoryReserved, OrderCreated, OrderCreatedV2
from streams.registry import INVENTORY_ANSWERS, INVENTORY_REQUESTS
from harness.kafka import produce, read_topic, wait_consumed
from harness.worker import http_get, metric_value

pytestmark = pytest.mark.kafka

V1, V2 = OrderCreated.topic(), OrderCreatedV2.topic()
N, M = 12, 9


def v1(order_id: str, **extra: object) -> tuple[bytes, bytes]:
    body = {"order_id": order_id, "user_id": "u-1", "items": [{"sku": "s-1", "qty": 1}], "amount": "5.00",
            "version": "v1", **extra}
    return order_id.encode(), json.dumps(body).encode()


def v2(order_id: str, **extra: object) -> tuple[bytes, bytes]:
    body = {"order_id": order_id, "user_id": "u-2", "items": [{"sku": "s-2", "qty": 2, "unit_price": "2.50"}],
            "amount": "5.00", "currency": "USD", "version": "v2", **extra}
    return order_id.encode(), json.dumps(body).encode()


async def test_v1_only_v2_only_and_one_order_on_both_topics_are_each_handled_once(broker, worker_factory):
    worker = worker_factory(DEFAULT_CURRENCY="SEK")
    await asyncio.to_thread(worker.start().wait_ready)
    both = "o-both"
    both_id = str(uuid.uuid4())
    await produce(broker.bootstrap, V1, [v1(f"o-v1-{i}") for i in range(N)] + [v1(both, event_id=both_id)])
    await produce(broker.bootstrap, V2, [v2(f"o-v2-{i}") for i in range(M)] + [v2(both, event_id=both_id)],
                  headers=[("ce_type", b"order.created.v2")])
    await produce(broker.bootstrap, V1, [v1("o-v9", version="v9")])

    expected = {f"o-v1-{i}" for i in range(N)} | {f"o-v2-{i}" for i in range(M)} | {both}
    derived = [InventoryReserved.topic(), InventoryRejected.topic()]
    await wait_consumed(broker.bootstrap, [V1, V2, INVENTORY_REQUESTS, INVENTORY_ANSWERS])
    await wait_consumed(broker.bootstrap, [INVENTORY_REQUESTS, INVENTORY_ANSWERS, *derived])

    text = await asyncio.to_thread(worker.metrics)
    for service in ("order-state", "inventory"):  # the handlers ran N + M + 1 times; the copy is a duplicate
        created = {s: metric_value(text, "event_processed_total", service=service, type="OrderCreated", status=s)
                   for s in ("success", "duplicate")}
        assert created == {"success": N + M + 1, "duplicate": 1}, service
    # inventory sent the order on both topics to its stages once: one reserve (one SKU), one expectation
    requests = Counter(json.loads(r.value).get("order_id")
                       for r in await read_topic(broker.bootstrap, INVENTORY_REQUESTS))
    answers = Counter((r.key, json.loads(r.value)["kind"])
                      for r in await read_topic(broker.bootstrap, INVENTORY_ANSWERS))
    assert requests[both] == 1 and answers[(both.encode(), "expect")] == 1, (requests[both], answers)

    records = [r for t in derived for r in await read_topic(broker.bootstrap, t)]
    outcomes = Counter(r.key.decode() for r in records)
    assert set(outcomes) == expected and set(outcomes.values()) == {1}  # each order decided once
    for r in records:  # derived events carry the CloudEvents headers, as the SDK reads them
        ce = from_binary_event(KafkaMessage(headers=r.headers, key=r.key, value=r.value))
        assert ce.get_id() == json.loads(r.value)["event_id"] and ce.get_source() == "/order-streams/inventory"
        assert "events." + ce.get_type() == r.topic and ce.get_dataschema() == f"schemas/{ce.get_type()}.json"

    status, doc = await asyncio.to_thread(http_get, f"{worker.url}/asyncapi.json")
    assert status == 200 and doc == asyncapi.ASYNCAPI_PATH.read_bytes()  # the worker serves the committed document

    status, body = await asyncio.to_thread(http_get, f"{worker.url}/orders/{both}")
    assert status == 200
    history = json.loads(body)["history"]
    assert [h["type"] for h in history].count("OrderCreated") == 1

    for service in ("order-state", "inventory"):
        assert metric_value(text, "dead_letter_total", service=service, reason="unknown_version") == 1
        [letter] = await read_topic(broker.bootstrap, f"{service}.dlq", expect=1)
        assert letter.key == b"o-v9" and letter.headers.get("x-dlq-reason") == b"unknown_version"
