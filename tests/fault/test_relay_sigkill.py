"""SIGKILL the outbox relay 5 times during 5,000 orders (issue 4)."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderCreated, OrderPaid
from harness.kafka import read_topic, wait_consumed
from harness.orders import OrdersClient
from harness.outbox_waits import outbox_stats, wait_for, wait_outbox_drained

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_issue4_relay_sigkilled_5_times_publishes_every_committed_order(
    broker, orders_factory, worker_factory, tmp_path
):
    rng = random.Random(4)
    common = {"kafka_broker": broker.url, "database_url": f"sqlite:///{tmp_path / 'orders.db'}"}
    api = orders_factory("serve", relay_enabled="false", **common)
    # A stable RELAY_ID names every run in the log (the SQLite relay lock is freed by
    # the kernel when a run dies, so the next one publishes at once whatever its id).
    relay = orders_factory("relay", relay_id="relay-under-test", relay_batch_size="200", **common)
    worker = worker_factory("w1")
    await asyncio.to_thread(api.start().wait_ready)
    await asyncio.to_thread(relay.start().wait_ready)
    await asyncio.to_thread(worker.start().wait_ready)

    client = OrdersClient(api.url, concurrency=16)
    orders = asyncio.create_task(client.many(5000))
    # Each kill lands while the relay is at work: after it had a random number of
    # further rows acknowledged since its (re)start — progress, not elapsed time.
    kills = []
    for _ in range(5):
        start = (await outbox_stats(api.url))["sent"]
        target = start + rng.randint(100, 600)
        await wait_for(lambda: outbox_stats(api.url), lambda s: s["sent"] >= target,
                       what=f"the relay publishing up to {target} rows", timeout=60)
        relay.kill()
        kills.append((await outbox_stats(api.url), orders.done(), relay.proc.returncode))
        await asyncio.to_thread(relay.start().wait_ready)
    ids = await orders
    assert set(client.statuses) == {201, 202}

    # Once nothing is pending, every record any relay run published is in the broker
    # (a row is marked sent only after its ack), and the topics are read to their end.
    await wait_outbox_drained(api.url, sent=2 * len(ids), timeout=120)

    wanted = {i.encode() for i in ids}
    created = await read_topic(broker.bootstrap, OrderCreated.topic(), until=lambda r: wanted <= {x.key for x in r})
    paid = await read_topic(broker.bootstrap, OrderPaid.topic(), until=lambda r: wanted <= {x.key for x in r})
    # The worker has committed every OrderPaid: each notification it sends for them
    # (duplicates too) is in the broker before its offset is committed.
    await wait_consumed(broker.bootstrap, [OrderPaid.topic()], timeout=180)
    sent = await read_topic(broker.bootstrap, NotificationSent.topic(),
                            until=lambda r: wanted <= {x.key for x in r}, timeout=180)
    republished = (len(created) + len(paid)) - 2 * len(ids)
    per_order = Counter(r.key for r in sent)
    print(f"\nrelay SIGKILL x5 over {len(ids)} orders: published {len(created) + len(paid)} records "
          f"for {2 * len(ids)} events ({republished} republished), notifications "
          f"{sum(per_order.values())} for {len(per_order)} orders, relay starts={relay.starts}; "
          f"(sent, pending) at the kills: {[(s['sent'], s['pending']) for s, _, _ in kills]}")
    # What the system did: five relay processes died of SIGKILL, each after publishing
    # (sent grew from kill to kill), and six relay runs came up ready (their own log line).
    assert [rc for _, _, rc in kills] == [-signal.SIGKILL] * 5
    sent_at_kills = [s["sent"] for s, _, _ in kills]
    assert all(a < b for a, b in zip(sent_at_kills, sent_at_kills[1:])), sent_at_kills
    assert relay.log_path.read_text().count("outbox relay relay-under-test ready") == 6
    assert not any(done for _, done, _ in kills), "a kill came after the last order was written"
    assert wanted - {r.key for r in created} == set()
    assert wanted - {r.key for r in paid} == set()
    assert set(per_order) == wanted
    assert [k for k, n in per_order.items() if n > 1] == []  # dedup: one effect per order
