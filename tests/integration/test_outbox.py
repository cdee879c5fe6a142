"""The order service and its outbox relay on SQLite (issue 4)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections import Counter

import pytest

from orders import outbox
from orders.db import SqliteDatabase
from orders.metrics import OrdersMetrics
from orders.relay import Relay
from orders.settings import OrdersSettings
from streams.broker import EmbeddedBroker
from streams.events import OrderCreated, OrderPaid
from tests.support.kafka import read_topic
from tests.support.orders import OrdersClient
from tests.support.worker import http_get

pytestmark = pytest.mark.kafka

CREATED, PAID = OrderCreated.topic(), OrderPaid.topic()


def outbox_rows(db_path) -> dict[str, tuple]:
    with sqlite3.connect(db_path) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT id, aggregate_id, topic, status, sent_at FROM outbox")}


async def test_1000_orders_over_http_publish_2000_events_in_order_with_event_id_headers(broker, orders_factory, tmp_path):
    db_path = tmp_path / "orders.db"
    service = orders_factory("serve", kafka_broker=broker.url, database_url=f"sqlite:///{db_path}")
    await asyncio.to_thread(service.start().wait_ready)
    client = OrdersClient(service.url)
    ids = await client.many(1000)
    assert set(client.statuses) == {201, 202}

    created = await read_topic(broker.bootstrap, CREATED, expect=1000, idle=1)
    paid = await read_topic(broker.bootstrap, PAID, expect=1000, idle=1)
    assert len(created) == len(paid) == 1000
    rows = outbox_rows(db_path)
    assert len(rows) == 2000
    for record in created + paid:
        body = json.loads(record.value)
        event_id = record.headers["event_id"].decode()
        assert event_id == body["event_id"] and event_id in rows
        assert rows[event_id][0] == body["order_id"] == record.key.decode()
    # Per-order order: an order's OrderPaid is sent only after its OrderCreated was acked.
    created_at = {r.key: r.timestamp_ms for r in created}
    assert all(r.timestamp_ms >= created_at[r.key] for r in paid)
    assert {r.key.decode() for r in paid} == set(ids)
    stats = await client.get_json("/outbox/stats")
    assert stats["pending"] == 0 and stats["sent"] == 2000


async def test_broker_stopped_during_burst_api_keeps_answering_and_nothing_is_lost(broker, orders_factory, tmp_path):
    db_path = tmp_path / "orders.db"
    service = orders_factory(
        "serve", kafka_broker=broker.url, database_url=f"sqlite:///{db_path}",
        relay_send_timeout="2", relay_backoff_base="0.2", relay_backoff_max="1",
    )
    await asyncio.to_thread(service.start().wait_ready)
    client = OrdersClient(service.url, concurrency=8)
    burst = asyncio.create_task(client.many(600))
    await asyncio.sleep(0.5)
    broker.stop()
    await asyncio.sleep(1.0)
    unsent_at_stop = {i for i, r in outbox_rows(db_path).items() if r[2] == "pending"}
    await asyncio.sleep(2.0)  # the API keeps taking orders while the broker is gone
    answered_by_end_of_outage = len(client.statuses)
    restarted = EmbeddedBroker(broker.port).start()
    try:
        ids = await burst
        assert set(client.statuses) == {201, 202}
        assert len(ids) == 600
        for _ in range(120):
            stats = await client.get_json("/outbox/stats")
            if stats["pending"] == 0:
                break
            await asyncio.sleep(0.5)
        assert stats["pending"] == 0
        rows = outbox_rows(db_path)
        on_new_broker = {
            r.headers["event_id"].decode()
            for topic in (CREATED, PAID)
            for r in await read_topic(restarted.bootstrap, topic, idle=1)
        }
        lost = unsent_at_stop - on_new_broker
        print(f"\nbroker outage: {len(unsent_at_stop)} rows unsent at the stop, "
              f"{answered_by_end_of_outage} API answers by the end of the outage, lost={len(lost)}")
        assert unsent_at_stop, "the broker stopped after the burst: nothing was tested"
        assert not lost
        assert all(r[2] == "sent" for r in rows.values())
        assert len(rows) == 1200
    finally:
        restarted.stop()


async def test_rolled_back_transaction_publishes_nothing(broker, tmp_path):
    db = SqliteDatabase(str(tmp_path / "orders.db"))
    await db.setup()
    settings = OrdersSettings(kafka_broker=broker.url, database_url=f"sqlite:///{tmp_path / 'orders.db'}")
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await outbox.add_event(tx, OrderCreated(order_id="o-rb", user_id="u", items=[{"sku": "s", "qty": 1}], amount=1), now=0)
            raise RuntimeError("business rule failed after the outbox insert")
    async with db.transaction() as tx:
        await outbox.add_event(tx, OrderCreated(order_id="o-ok", user_id="u", items=[{"sku": "s", "qty": 1}], amount=1), now=0)
    relay = Relay(db, settings, OrdersMetrics())
    try:
        assert await relay.round() == 1
        assert await relay.round() == 0
    finally:
        await relay._reset_producer()
        await db.close()
    published = await read_topic(broker.bootstrap, CREATED, expect=1, idle=1)
    assert Counter(r.key for r in published) == {b"o-ok": 1}


async def test_a_row_too_large_for_the_producer_is_given_up_and_the_other_ten_are_published(broker, tmp_path):
    """The issue: one row over ``max_request_size`` among eleven claimed gave "11 of 11
    rows failed to publish", every round, forever. Real producer, real broker."""
    db = SqliteDatabase(str(tmp_path / "orders.db"))
    await db.setup()
    settings = OrdersSettings(kafka_broker=broker.url, database_url=f"sqlite:///{tmp_path / 'orders.db'}",
                              relay_max_request_bytes=8192)
    big_items = [{"sku": f"{i:03d}" + "s" * 100, "qty": 1} for i in range(100)]
    async with db.transaction() as tx:
        for i in range(11):
            items = big_items if i == 4 else [{"sku": "s", "qty": 1}]
            await outbox.add_event(tx, OrderCreated(order_id=f"o-{i}", user_id="u", items=items, amount=1), now=0)
        # the big order's next event waits behind it
        await outbox.add_event(tx, OrderPaid(order_id="o-4", user_id="u", amount=1), now=0)
    relay = Relay(db, settings, OrdersMetrics())
    try:
        assert await relay.round() == 10
        assert await relay.round() == 1  # o-4's OrderPaid: no longer held back
        assert await relay.round() == 0
        async with db.transaction() as tx:
            st = await outbox.stats(tx, now=1)
            [(status, error)] = await tx.fetchall(
                "SELECT status, last_error FROM outbox WHERE aggregate_id = 'o-4' AND topic = ?", (CREATED,))
    finally:
        await relay._reset_producer()
        await db.close()
    assert status == "failed" and error.startswith("MessageSizeTooLargeError")
    assert (st.pending, st.sent, st.failed_terminal) == (0, 11, 1)
    created = await read_topic(broker.bootstrap, CREATED, expect=10, idle=1)
    assert sorted(r.key for r in created) == sorted(f"o-{i}".encode() for i in range(11) if i != 4)
    assert [r.key for r in await read_topic(broker.bootstrap, PAID, expect=1, idle=1)] == [b"o-4"]


async def test_api_and_relay_in_separate_processes_each_export_their_own_metrics(broker, orders_factory, tmp_path):
    """The compose layout: the relay alone serves the outbox series (RELAY_PORT), kept
    current by its timer; the API-only process exports none."""
    common = {"kafka_broker": broker.url, "database_url": f"sqlite:///{tmp_path / 'orders.db'}"}
    api = orders_factory("serve", relay_enabled="false", **common)
    relay = orders_factory("relay", outbox_stats_interval="0.2", **common)
    await asyncio.to_thread(api.start().wait_ready)
    await asyncio.to_thread(relay.start().wait_ready)
    client = OrdersClient(api.url)
    await client.many(50)
    await read_topic(broker.bootstrap, PAID, expect=50, idle=0.5)

    def relay_metrics() -> dict[str, float]:
        text = http_get(f"{relay.http_url}/metrics")[1].decode()
        return {m[0]: float(m[1]) for m in re.findall(r"^(outbox_\w+) (\S+)$", text, re.M)}

    for _ in range(100):
        m = relay_metrics()
        if m.get("outbox_published_total") == 100 and m.get("outbox_pending_rows") == 0:
            break
        await asyncio.sleep(0.1)
    assert m["outbox_published_total"] == 100 and m["outbox_pending_rows"] == 0 and m["outbox_failed_rows"] == 0
    assert "outbox_" not in http_get(f"{api.url}/metrics")[1].decode()
