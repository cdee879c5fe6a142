"""Two relays on PostgreSQL share the outbox without publishing a row twice (issue 4)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from streams.events import OrderCreated, OrderPaid
from harness.kafka import read_topic
from harness.orders import OrdersClient
from harness.outbox_waits import wait_outbox_drained

pytestmark = pytest.mark.kafka


async def test_two_relays_on_postgres_publish_every_row_exactly_once(broker, postgres, orders_factory):
    common = {"kafka_broker": broker.url, "database_url": postgres.url}
    api = orders_factory("serve", relay_enabled="false", **common)
    await asyncio.to_thread(api.start().wait_ready)
    relays = [orders_factory("relay", name=f"relay-{n}", relay_batch_size="50", **common) for n in (1, 2)]
    for r in relays:
        await asyncio.to_thread(r.start().wait_ready)

    client = OrdersClient(api.url)
    ids = await client.many(600)
    assert set(client.statuses) == {201, 202}

    # A row leaves 'pending' only in the transaction that held its claim, after the
    # broker acknowledged it: once none is pending, every record either relay sends
    # for these rows is in the broker, and reading to the end sees any duplicate.
    await wait_outbox_drained(api.url, sent=1200)
    records = []
    for topic in (OrderCreated.topic(), OrderPaid.topic()):
        records += await read_topic(broker.bootstrap, topic, expect=600)
    per_id = Counter(r.headers["event_id"] for r in records)
    assert len(per_id) == 1200
    assert [i for i, n in per_id.items() if n > 1] == []
    assert {r.key.decode() for r in records} == set(ids)
    stats = await client.get_json("/outbox/stats")
    assert stats == {**stats, "pending": 0, "sent": 1200}
    # Both relays took part (SKIP LOCKED let them work side by side).
    for r in relays:
        await asyncio.to_thread(r.stop)
    published = [int(re.findall(r"published (\d+) rows", r.tail(400))[-1]) for r in relays]
    print(f"\nrows published per relay: {published}")
    assert sum(published) == 1200 and all(published)
