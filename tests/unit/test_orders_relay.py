"""orders.relay.Relay on SQLite with a fake producer (no broker): publish, ack → sent,
failure → retry with backoff, per-order order, the lease."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orders import outbox
from orders.db import SqliteDatabase
from orders.metrics import OrdersMetrics
from orders.relay import LEASE, Relay
from orders.settings import OrdersSettings
from streams.events import Event, OrderCreated, OrderItem, OrderPaid
from tests.unit.fakes import Clock

T0 = 1_700_000_000.0
BASE = 2.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {n.upper() for n in OrdersSettings.model_fields}
    for var in list(os.environ):
        if var.upper() in names:
            monkeypatch.delenv(var)


@dataclass
class Send:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    ack: asyncio.Future[Any]


@dataclass
class FakeProducer:
    """``send`` returns a future: acked at once, failed at once, or held for the test.

    ``outcome(send)`` returns ``"ack"``, ``"hold"`` or an exception to fail with."""

    outcome: Callable[[Send], Any] = lambda s: "ack"
    sends: list[Send] = field(default_factory=list)

    async def send(self, topic: str, *, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        s = Send(topic, key, value, list(headers), fut)
        self.sends.append(s)
        result = self.outcome(s)
        if result == "ack":
            fut.set_result(("metadata", topic))
        elif isinstance(result, BaseException):
            fut.set_exception(result)
        return fut


class BrokerDown(Exception):
    pass


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    d = SqliteDatabase(str(tmp_path / "orders.db"))
    await d.setup()
    yield d
    await d.close()


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> dict[int, Any]:
    """Relay id() → the fake producer its ``_ensure_producer`` returns (or an exception it raises)."""
    table: dict[int, Any] = {}

    async def fake_ensure_producer(self: Relay) -> Any:
        p = table[id(self)]
        if isinstance(p, BaseException):
            raise p
        return p

    monkeypatch.setattr(Relay, "_ensure_producer", fake_ensure_producer)
    return table


@pytest.fixture
def make_relay(db: SqliteDatabase, producers: dict[int, Any]) -> Callable[..., tuple[Relay, FakeProducer]]:
    def make(relay_id: str = "relay-a", clock: Clock | None = None, producer: Any = None,
             **settings: Any) -> tuple[Relay, FakeProducer]:
        s = OrdersSettings(
            relay_id=relay_id, relay_batch_size=settings.pop("relay_batch_size", 100),
            relay_backoff_base=BASE, relay_backoff_max=60.0, relay_lease_ttl=30.0,
            relay_send_timeout=settings.pop("relay_send_timeout", 5.0),
            database_url="sqlite:///unused.db", **settings,
        )
        relay = Relay(db, s, OrdersMetrics(), clock=clock or Clock(T0))
        p = FakeProducer() if producer is None else producer
        producers[id(relay)] = p
        return relay, p

    return make


def created(order_id: str) -> OrderCreated:
    return OrderCreated(order_id=order_id, user_id="u-1", items=(OrderItem(sku="s", qty=1),), amount=Decimal("5"))


def paid(order_id: str) -> OrderPaid:
    return OrderPaid(order_id=order_id, user_id="u-1", amount=Decimal("5"))


async def add(db: SqliteDatabase, event: Event, *, now: float = T0, headers: Any = ()) -> str:
    async with db.transaction() as tx:
        return await outbox.add_event(tx, event, now=now, headers=headers)


async def table(db: SqliteDatabase) -> dict[str, dict[str, Any]]:
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT id, status, attempts, next_retry_at, sent_at, last_error FROM outbox ORDER BY position"
        )
    return {r[0]: {"status": r[1], "attempts": r[2], "next_retry_at": r[3], "sent_at": r[4], "last_error": r[5]}
            for r in rows}


def sample(relay: Relay, name: str) -> float:
    value = relay.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


# -- publish and ack -------------------------------------------------------------------


async def test_round_publishes_claimed_rows_with_an_event_id_header(db: SqliteDatabase, make_relay: Any) -> None:
    ev_a, ev_b = created("o-a"), created("o-b")
    a = await add(db, ev_a, headers=[("traceparent", "00-aa-01")])
    b = await add(db, ev_b)
    relay, producer = make_relay()

    assert await relay.round() == 2

    assert [s.topic for s in producer.sends] == ["events.order.created.v1"] * 2
    sa, sb = producer.sends
    assert sa.key == b"o-a" and sb.key == b"o-b"
    assert OrderCreated.model_validate_json(sa.value) == ev_a
    assert OrderCreated.model_validate_json(sb.value) == ev_b
    assert sa.headers == [("event_id", a.encode()), ("traceparent", b"00-aa-01")]
    assert sb.headers == [("event_id", b.encode())]
    assert a == str(ev_a.event_id)


async def test_rows_are_marked_sent_only_after_the_ack_resolves(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    clock = Clock(T0)
    relay, producer = make_relay(clock=clock, producer=FakeProducer(outcome=lambda s: "hold"))

    task = asyncio.create_task(relay.round())
    await until(lambda: len(producer.sends) == 2)
    await asyncio.sleep(0.02)
    assert not task.done()
    assert {r["status"] for r in (await table(db)).values()} == {"pending"}

    clock.now = T0 + 3
    producer.sends[1].ack.set_result("meta")
    await asyncio.sleep(0.02)
    assert not task.done()  # still waiting for the other ack
    assert (await table(db))[b]["status"] == "pending"

    producer.sends[0].ack.set_result("meta")
    assert await asyncio.wait_for(task, 2) == 2
    t = await table(db)
    assert t[a]["status"] == t[b]["status"] == "sent"
    assert t[a]["sent_at"] == t[b]["sent_at"] == T0 + 3
    assert sample(relay, "outbox_published_total") == 2
    assert relay.published_total == 2
    # Nothing is published twice.
    assert await relay.round() == 0
    assert len(producer.sends) == 2


async def test_a_failed_ack_leaves_the_row_pending_with_a_retry_time(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    clock = Clock(T0)
    relay, producer = make_relay(clock=clock, producer=FakeProducer(outcome=lambda s: BrokerDown("leader not available")))

    assert await relay.round() == 0
    row = (await table(db))[a]
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    assert row["last_error"] == "BrokerDown: leader not available"
    assert row["sent_at"] is None
    # backoff(1) = BASE × [0.5, 1)
    assert T0 + 0.5 * BASE <= row["next_retry_at"] < T0 + BASE
    assert sample(relay, "outbox_publish_failures_total") == 1
    assert sample(relay, "outbox_published_total") == 0

    # Not retried before it is due.
    assert await relay.round() == 0
    assert len(producer.sends) == 1

    # Due: retried, fails again, and the backoff doubles.
    clock.now = row["next_retry_at"]
    assert await relay.round() == 0
    assert len(producer.sends) == 2
    row2 = (await table(db))[a]
    assert row2["attempts"] == 2
    assert clock.now + BASE <= row2["next_retry_at"] < clock.now + 2 * BASE

    # The broker is back: the row is sent and the error cleared.
    clock.now = row2["next_retry_at"]
    producer.outcome = lambda s: "ack"
    assert await relay.round() == 1
    row3 = (await table(db))[a]
    assert row3["status"] == "sent" and row3["last_error"] is None and row3["attempts"] == 2


async def test_only_the_failed_rows_of_a_batch_are_retried(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    relay, _ = make_relay(producer=FakeProducer(outcome=lambda s: BrokerDown("x") if s.key == b"o-a" else "ack"))

    assert await relay.round() == 1
    t = await table(db)
    assert t[a]["status"] == "pending" and t[a]["attempts"] == 1
    assert t[b]["status"] == "sent" and t[b]["attempts"] == 0
    assert sample(relay, "outbox_published_total") == 1
    assert sample(relay, "outbox_publish_failures_total") == 1


async def test_an_unanswered_send_times_out_and_is_retried_later(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    relay, producer = make_relay(producer=FakeProducer(outcome=lambda s: "hold"), relay_send_timeout=0.05)

    assert await asyncio.wait_for(relay.round(), 2) == 0
    row = (await table(db))[a]
    assert row["status"] == "pending" and row["attempts"] == 1
    assert row["last_error"].startswith("TimeoutError: no broker ack")
    assert row["next_retry_at"] > T0
    # The relay stopped waiting for that send.
    assert producer.sends[0].ack.cancelled()


async def test_no_producer_fails_every_claimed_row(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    relay, _ = make_relay(producer=BrokerDown("no brokers"))

    assert await relay.round() == 0
    t = await table(db)
    for row_id in (a, b):
        assert t[row_id]["status"] == "pending"
        assert t[row_id]["attempts"] == 1
        assert t[row_id]["last_error"] == "BrokerDown: no brokers"


async def test_an_empty_outbox_publishes_nothing(db: SqliteDatabase, make_relay: Any) -> None:
    relay, producer = make_relay()
    assert await relay.round() == 0
    assert producer.sends == []


async def test_round_respects_the_batch_size(db: SqliteDatabase, make_relay: Any) -> None:
    ids = [await add(db, created(f"o-{i}")) for i in range(3)]
    relay, producer = make_relay(relay_batch_size=2)
    assert await relay.round() == 2
    assert [s.headers[0][1].decode() for s in producer.sends] == ids[:2]
    assert await relay.round() == 1
    assert [s.headers[0][1].decode() for s in producer.sends] == ids


# -- per-order order ---------------------------------------------------------------------


async def test_an_orders_events_are_published_one_round_at_a_time_in_order(db: SqliteDatabase, make_relay: Any) -> None:
    c = await add(db, created("o-a"))
    p = await add(db, paid("o-a"))
    relay, producer = make_relay()

    assert await relay.round() == 1
    assert [s.topic for s in producer.sends] == ["events.order.created.v1"]
    assert producer.sends[0].headers[0] == ("event_id", c.encode())

    assert await relay.round() == 1
    assert [s.topic for s in producer.sends] == ["events.order.created.v1", "events.order.paid.v1"]
    assert producer.sends[1].headers[0] == ("event_id", p.encode())

    assert await relay.round() == 0
    assert len(producer.sends) == 2


async def test_a_failed_first_event_holds_back_the_orders_next_event(db: SqliteDatabase, make_relay: Any) -> None:
    c = await add(db, created("o-a"))
    await add(db, paid("o-a"))
    clock = Clock(T0)
    relay, producer = make_relay(clock=clock, producer=FakeProducer(outcome=lambda s: BrokerDown("x")))

    assert await relay.round() == 0
    producer.outcome = lambda s: "ack"
    clock.now = T0 + 0.1  # before the created row's retry is due
    assert await relay.round() == 0
    assert [s.topic for s in producer.sends] == ["events.order.created.v1"]

    clock.now = T0 + BASE
    assert await relay.round() == 1
    assert producer.sends[-1].headers[0] == ("event_id", c.encode())
    assert await relay.round() == 1
    assert [s.topic for s in producer.sends] == ["events.order.created.v1"] * 2 + ["events.order.paid.v1"]


# -- lease -------------------------------------------------------------------------------


async def test_a_relay_without_the_lease_publishes_nothing(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    async with db.transaction() as tx:
        assert await outbox.try_lease(tx, LEASE, "someone-else", now=T0, ttl=10.0)
    clock = Clock(T0)
    relay, producer = make_relay(clock=clock)

    assert await relay.round() == 0
    assert producer.sends == []
    assert (await table(db))[a]["status"] == "pending"

    # The other holder stops renewing: after expiry this relay takes over.
    clock.now = T0 + 11
    assert await relay.round() == 1
    assert (await table(db))[a]["status"] == "sent"


async def test_two_relays_one_lease(db: SqliteDatabase, make_relay: Any) -> None:
    await add(db, created("o-a"))
    clock = Clock(T0)
    first, p1 = make_relay("relay-a", clock=clock)
    second, p2 = make_relay("relay-b", clock=clock)

    assert await first.round() == 1
    b = await add(db, created("o-b"))
    clock.now = T0 + 5
    assert await second.round() == 0
    assert p2.sends == []
    assert await first.round() == 1  # renews at T0 + 5 → lease until T0 + 15
    clock.now = T0 + 12
    assert await second.round() == 0
    assert (await table(db))[b]["status"] == "sent"
    assert [s.key for s in p1.sends] == [b"o-a", b"o-b"]


# -- housekeeping and the run loop -----------------------------------------------------------


async def test_housekeeping_sets_gauges_and_deletes_old_sent_rows(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"), now=T0 - 7200)
    b = await add(db, created("o-b"), now=T0 - 30)
    async with db.transaction() as tx:
        await outbox.mark_sent(tx, [a], now=T0 - 3601)
    relay, _ = make_relay(outbox_retention=3600.0)

    await relay._housekeeping()
    assert set(await table(db)) == {b}
    assert sample(relay, "outbox_pending_rows") == 1
    assert sample(relay, "outbox_oldest_pending_age_seconds") == pytest.approx(30)


async def test_notify_wakes_the_running_relay(db: SqliteDatabase, make_relay: Any) -> None:
    relay, producer = make_relay(relay_poll_interval=60.0)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.05)  # first (empty) round done, now waiting up to 60 s
        a = await add(db, created("o-a"))
        relay.notify()
        await until(lambda: len(producer.sends) == 1)
        async def is_sent() -> bool:
            return (await table(db))[a]["status"] == "sent"
        async with asyncio.timeout(2):
            while not await is_sent():
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
