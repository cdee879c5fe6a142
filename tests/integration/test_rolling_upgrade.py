"""The rollout the README prescribes, on the broker: the worker (which reads v1 and v2)
runs, orders flow, and the order service is switched from ORDER_EVENTS_VERSION=1 to 2
(a second process starts with 2 and takes the traffic, then the first stops). Every
order ends NOTIFIED; none is lost, none handled twice (issue 22, "must show")."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from streams.events import NotificationSent, OrderCreated, OrderCreatedV2
from harness.kafka import read_topic
from harness.orders import OrdersClient
from harness.worker import http_get, metric_value

pytestmark = pytest.mark.kafka

PER_PHASE = 30


async def test_switching_the_order_service_from_v1_to_v2_while_orders_flow(broker, orders_factory, worker_factory,
                                                                           tmp_path):
    common = {"kafka_broker": broker.url, "database_url": f"sqlite:///{tmp_path / 'orders.db'}"}
    worker = worker_factory("w1")
    old = orders_factory("serve", name="v1", order_events_version="1", **common)
    await asyncio.to_thread(worker.start().wait_ready)
    await asyncio.to_thread(old.start().wait_ready)

    target = {"url": old.url}
    ids: list[str] = []
    served_by: dict[str, int] = {}
    stop = asyncio.Event()

    async def flow() -> None:  # one order after another, to whichever service is current
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                url = target["url"]
                ids.append(await OrdersClient(url).create_and_pay(session))
                served_by[url] = served_by.get(url, 0) + 1

    flowing = asyncio.create_task(flow())
    await wait_for(lambda: len(ids) >= PER_PHASE, flowing)
    new = orders_factory("serve", name="v2", order_events_version="2", **common)
    await asyncio.to_thread(new.start().wait_ready)
    target["url"] = new.url  # the switch; orders keep coming
    at_switch = len(ids)
    # A load balancer drains before it stops a backend: the order in flight to the old
    # process (created there, not yet paid) finishes before the old process stops.
    await wait_for(lambda: served_by.get(new.url, 0) >= 1, flowing)
    await asyncio.to_thread(old.stop)  # its relay's lock passes to the new process
    await wait_for(lambda: len(ids) >= at_switch + PER_PHASE, flowing)
    stop.set()
    await flowing

    def statuses() -> list[str]:
        return [json.loads(http_get(f"{worker.url}/orders/{i}")[1]).get("status") for i in ids]

    await wait_for(lambda: all(s == "NOTIFIED" for s in statuses()), timeout=120)

    v1 = [r.key.decode() for r in await read_topic(broker.bootstrap, OrderCreated.topic())]
    v2 = [r.key.decode() for r in await read_topic(broker.bootstrap, OrderCreatedV2.topic())]
    assert len(v1) >= PER_PHASE and len(v2) >= PER_PHASE - 1, (len(v1), len(v2))
    assert set(v1 + v2) == set(ids) and not set(v1) & set(v2)  # each order on one version's topic

    sent = await read_topic(broker.bootstrap, NotificationSent.topic(), expect=len(ids))
    published = [*await read_topic(broker.bootstrap, OrderCreated.topic()),
                 *await read_topic(broker.bootstrap, OrderCreatedV2.topic()), *sent]
    for r in published:  # what the relay and the worker produce, as the CloudEvents SDK reads it
        ce = from_binary_event(KafkaMessage(headers=r.headers, key=r.key, value=r.value))
        assert ce.get_id() == json.loads(r.value)["event_id"] and "events." + ce.get_type() == r.topic

    text = await asyncio.to_thread(worker.metrics)
    for service, type_ in (("order-state", "OrderCreated"), ("inventory", "OrderCreated"),
                           ("notifications", "OrderPaid")):
        done = metric_value(text, "event_processed_total", service=service, type=type_, status="success")
        assert done == len(ids), (service, done, len(ids))
    assert metric_value(text, "dead_letter_total", service="order-state") == 0


async def wait_for(condition, flowing: asyncio.Task | None = None, timeout: float = 60.0) -> None:
    """Wait for `condition`; a failed order flow fails the test with its own error, not a timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(condition):
        if flowing is not None and flowing.done():
            flowing.result()
            raise AssertionError("the order flow stopped before the condition was met")
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.1)
