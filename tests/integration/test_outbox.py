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
from streams.broker import EmbeddedBroker, KafkaBroker
from streams.events import OrderCreated, OrderPaid
from harness.kafka import read_topic
from harness.orders import OrdersClient
from harness.outbox_waits import outbox_stats, wait_for, wait_outbox_drained
from harness.worker import http_get

pytestmark = pytest.mark.kafka

CREATED, PAID = OrderCreated.topic(), OrderPaid.topic()


def outbox_rows(db_path) -> dict[str, tuple]:
    with sqlite3.connect(db_path) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT id, aggregate_id, topic, status, sent_at FROM outbox")}


async def event_ids_on(bootstrap: str) -> set[str]:
    """The ``event_id`` header of every OrderCreated and OrderPaid record on the broker."""
    return {r.headers["event_id"].decode() for topic in (CREATED, PAID) for r in await read_topic(bootstrap, topic)}


def attempts_by_row(db_path) -> dict[str, int]:
    """Failed publish attempts recorded (committed) per row, for rows with any."""
    with sqlite3.connect(db_path) as conn:
        return dict(conn.execute("SELECT id, attempts FROM outbox WHERE attempts > 0").fetchall())


async def test_1000_orders_over_http_publish_2000_events_in_order_with_event_id_headers(broker, orders_factory, tmp_path):
    db_path = tmp_path / "orders.db"
    service = orders_factory("serve", kafka_broker=broker.url, database_url=f"sqlite:///{db_path}")
    await asyncio.to_thread(service.start().wait_ready)
    client = OrdersClient(service.url)
    ids = await client.many(1000)
    assert set(client.statuses) == {201, 202}

    # Every row is written (the API answered); once none is pending, every record the
    # relay publishes for them is in the broker: reading to the end sees duplicates too.
    await wait_outbox_drained(service.url, sent=2000)
    created = await read_topic(broker.bootstrap, CREATED, expect=1000)
    paid = await read_topic(broker.bootstrap, PAID, expect=1000)
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
    # Two bursts of 300 orders: the first runs as the broker stops; the second starts only
    # once the outage has begun, so orders are written during it however fast the API is
    # (with group commit the API can take all 600 before the relay's first timed-out send).
    burst = asyncio.create_task(client.many(300))
    # Stop the broker mid-burst: once the relay has had some rows acknowledged by it.
    await wait_for(lambda: outbox_stats(service.url), lambda s: s["sent"] >= 50,
                   what="the relay publishing before the outage", timeout=30)
    # Rows marked sent by now were acknowledged by this broker: their records are on it.
    sent_before_stop = {i for i, r in outbox_rows(db_path).items() if r[2] == "sent"}
    on_old_broker = await event_ids_on(broker.bootstrap)
    failed_before = attempts_by_row(db_path)
    broker.stop()
    # The relay's rounds run one after another and each marks its rows in one
    # transaction: once a failed attempt made after the stop is committed, the round
    # that was in flight at the stop has marked every row the old broker acknowledged.
    # What is still pending then was never acknowledged, and must reach the new broker.
    await wait_for(lambda: attempts_by_row(db_path),
                   lambda now: any(n > failed_before.get(i, 0) for i, n in now.items()),
                   what="a publish attempt failing against the stopped broker", timeout=30)
    at_stop = outbox_rows(db_path)
    unsent_at_stop = {i for i, r in at_stop.items() if r[2] == "pending"}
    #: acknowledged by the old broker (the ones since its snapshot above left with it)
    acked_by_old = {i for i, r in at_stop.items() if r[2] == "sent"}
    answered_at_stop = len(client.statuses)
    burst_in_outage = asyncio.create_task(client.many(300))
    # Keep the broker down until the API has taken 50 more orders without it (their
    # rows are written during the outage) and the relay has retried a row against it.
    await wait_for(lambda: len(client.statuses), lambda n: n >= answered_at_stop + 50,
                   what="50 orders answered during the outage", timeout=30)
    retried_in_outage = max((await wait_for(
        lambda: attempts_by_row(db_path), lambda now: max(now.values(), default=0) >= 2,
        what="the relay retrying a row against the stopped broker", timeout=30)).values())
    answered_by_end_of_outage = len(client.statuses)
    pending_at_end_of_outage = {i for i, r in outbox_rows(db_path).items() if r[2] == "pending"}
    restarted = start_again(broker)
    try:
        ids = await burst + await burst_in_outage
        assert set(client.statuses) == {201, 202}
        assert len(ids) == 600
        stats = await wait_outbox_drained(service.url, sent=1200)
        assert stats["pending"] == 0
        rows = outbox_rows(db_path)
        # Nothing is pending: every row the old broker did not acknowledge — pending at
        # the stop, or written during or after the outage — is on the new broker by now.
        on_new_broker = await event_ids_on(restarted.bootstrap)
        lost = set(rows) - acked_by_old - on_new_broker
        print(f"\nbroker outage: {len(unsent_at_stop)} rows unsent at the stop, "
              f"{len(set(rows) - acked_by_old)} rows not acknowledged by the old broker, "
              f"{answered_by_end_of_outage - answered_at_stop} API answers during the outage "
              f"({len(pending_at_end_of_outage)} rows pending at its end, up to {retried_in_outage} "
              f"attempts per row), lost={len(lost)}")
        assert unsent_at_stop, "the broker stopped after the burst: nothing was tested"
        assert answered_by_end_of_outage > answered_at_stop, "the API stopped answering without the broker"
        assert pending_at_end_of_outage - unsent_at_stop, "no order was written during the outage"
        assert sent_before_stop <= on_old_broker, sorted(sent_before_stop - on_old_broker)[:5]
        assert not lost, f"{len(lost)} rows on no broker, e.g. {sorted(lost)[:5]}"
        assert on_new_broker <= set(rows)  # no record that is not a row
        assert all(r[2] == "sent" for r in rows.values())
        assert len(rows) == 1200
    finally:
        if restarted is not broker:
            restarted.stop()


def start_again(broker: EmbeddedBroker | KafkaBroker) -> EmbeddedBroker | KafkaBroker:
    """The stopped broker back on its port: Apache Kafka with its logs kept (the records it
    acknowledged are still there), Tansu empty (it keeps nothing once stopped)."""
    if isinstance(broker, KafkaBroker):
        broker.start(die_with_parent=True)  # the session's broker: the kafka fixture stops it
        return broker
    return EmbeddedBroker(broker.port).start()


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
    # the relay is done (its rounds awaited every ack): read to the end, duplicates included
    published = await read_topic(broker.bootstrap, CREATED, expect=1)
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
    # the relay is done (its rounds awaited every ack): read to the end, duplicates included
    created = await read_topic(broker.bootstrap, CREATED, expect=10)
    assert sorted(r.key for r in created) == sorted(f"o-{i}".encode() for i in range(11) if i != 4)
    assert [r.key for r in await read_topic(broker.bootstrap, PAID, expect=1)] == [b"o-4"]


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
    await wait_outbox_drained(api.url, sent=100)

    def relay_metrics() -> dict[str, float]:
        text = http_get(f"{relay.http_url}/metrics")[1].decode()
        return {m[0]: float(m[1]) for m in re.findall(r"^(outbox_\w+) (\S+)$", text, re.M)}

    # the rows are sent; the relay's gauge follows at its next timer tick (0.2 s)
    m = await wait_for(relay_metrics,
                       lambda m: m.get("outbox_published_total") == 100 and m.get("outbox_pending_rows") == 0,
                       what="the relay's outbox gauges catching up", timeout=10)
    assert m["outbox_published_total"] == 100 and m["outbox_pending_rows"] == 0 and m["outbox_failed_rows"] == 0
    assert "outbox_" not in http_get(f"{api.url}/metrics")[1].decode()
