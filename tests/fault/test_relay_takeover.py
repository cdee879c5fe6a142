"""The relay resumes within seconds after a crash, and two relays never publish the
same row twice, even when one is paused (issue 25 item 3), on SQLite and PostgreSQL.

SQLite: one relay at a time holds an OS lock on ``<database>.relay-lock``; the kernel
releases it the moment the holder dies and never while it lives (paused or not).
PostgreSQL: each row is claimed with ``FOR UPDATE SKIP LOCKED`` in a transaction that
the server rolls back when the holder's connection dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest

from streams.events import OrderCreated
from harness.kafka import read_topic
from harness.orders import OrdersClient
from harness.outbox_waits import outbox_stats, wait_for, wait_outbox_drained

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: What issue 25 asks: a restarted relay publishes within 5 s of starting. Measured here
#: (see the printed line) it is well under that; the old 30 s lease kept it ~27 s.
TAKEOVER_DEADLINE = 5.0


def database(kind: str, request: pytest.FixtureRequest, tmp_path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'orders.db'}"
    return request.getfixturevalue("postgres").url


async def create(client: OrdersClient, n: int) -> list[str]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        bodies = [client._post(session, "/orders", {"user_id": "u-1", "items": [{"sku": "s-1", "qty": 1}],
                                                    "amount": "1.00"}) for _ in range(n)]
        answers = await asyncio.gather(*bodies)
    assert {s for s, _ in answers} == {201}
    return [b["order_id"] for _, b in answers]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.needs("postgres"))])
async def test_a_relay_started_after_a_sigkill_publishes_within_seconds(
        kind, request, broker, orders_factory, tmp_path):
    common = {"kafka_broker": broker.url, "database_url": database(kind, request, tmp_path)}
    api = orders_factory("serve", relay_enabled="false", **common)
    await asyncio.to_thread(api.start().wait_ready)
    # The default RELAY_ID (<host>:<pid>): every start is a new relay, as in production.
    relay = orders_factory("relay", **common)
    await asyncio.to_thread(relay.start().wait_ready)
    client = OrdersClient(api.url)
    first = await create(client, 50)
    await wait_outbox_drained(api.url, sent=len(first))

    relay.kill()
    later = await create(client, 50)  # they wait: nobody relays
    assert (await outbox_stats(api.url))["pending"] == len(later)
    started = time.monotonic()
    relay.start()
    await wait_for(lambda: outbox_stats(api.url), lambda s: s["pending"] < len(later),
                   what="the restarted relay publishing", timeout=TAKEOVER_DEADLINE + 25, interval=0.05)
    took = time.monotonic() - started
    print(f"\n{kind}: SIGKILLed relay restarted; first publish {took:.2f} s after the start")
    assert took <= TAKEOVER_DEADLINE
    await wait_outbox_drained(api.url, sent=len(first) + len(later))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.needs("postgres"))])
async def test_two_relays_with_one_paused_publish_nothing_twice(kind, request, broker, orders_factory, tmp_path):
    common = {"kafka_broker": broker.url, "database_url": database(kind, request, tmp_path),
              "relay_batch_size": "20"}
    api = orders_factory("serve", relay_enabled="false", **common)
    await asyncio.to_thread(api.start().wait_ready)
    relays = [orders_factory("relay", name=f"relay-{n}", **common) for n in (1, 2)]
    for r in relays:
        await asyncio.to_thread(r.start().wait_ready)
    client = OrdersClient(api.url, concurrency=8)
    ids = await create(client, 100)
    await wait_outbox_drained(api.url, sent=len(ids))

    # Pause a relay that is publishing: the one whose /health says it holds the lock
    # on SQLite; either on PostgreSQL. Orders keep coming while it is stopped.
    holders = [r for r in relays if (await client.get_json_at(r.http_url, "/health")).get("lease") != "waiting"]
    paused, other = holders[0], next(r for r in relays if r is not holders[0])
    writing = asyncio.ensure_future(create(client, 400))
    await wait_for(lambda: outbox_stats(api.url), lambda s: s["pending"] > 0, what="rows pending", timeout=30,
                   interval=0.01)
    os.killpg(paused.proc.pid, signal.SIGSTOP)
    try:
        ids += await writing
        if kind == "postgresql":  # the other relay goes on beside the paused one's claimed rows
            await wait_for(lambda: outbox_stats(api.url), lambda s: s["sent"] >= 300,
                           what="the other relay publishing while one is paused", timeout=60)
    finally:
        os.killpg(paused.proc.pid, signal.SIGCONT)
    await wait_outbox_drained(api.url, sent=len(ids))

    # Then the holder dies while paused: the other takes over.
    more = asyncio.ensure_future(create(client, 100))
    os.killpg(paused.proc.pid, signal.SIGSTOP)
    paused.kill()
    ids += await more
    await wait_outbox_drained(api.url, sent=len(ids), timeout=60)

    records = await read_topic(broker.bootstrap, OrderCreated.topic(), expect=len(ids))
    per_id = Counter(r.headers["event_id"] for r in records)
    print(f"\n{kind}: {len(ids)} orders, {len(records)} OrderCreated records, "
          f"{sum(n - 1 for n in per_id.values())} published twice")
    assert {r.key.decode() for r in records} == set(ids)
    assert [i for i, n in per_id.items() if n > 1] == []
