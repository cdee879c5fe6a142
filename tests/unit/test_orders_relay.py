"""orders.relay.Relay on SQLite with a fake producer (no broker): publish, ack → sent,
failure → retry with backoff, per-order order, the SQLite relay lock."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiokafka.errors import InvalidTopicError, KafkaConnectionError, MessageSizeTooLargeError, RecordTooLargeError

from orders import outbox
from orders import relay as relay_module
from orders.db import SqliteDatabase
from orders.metrics import OrdersMetrics
from orders.relay import Relay, relay_app
from orders.settings import OrdersSettings
from streams.events import Event, OrderCreated, OrderItem, OrderPaid
from streams.engine.testing import Clock

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

    ``outcome(send)`` returns ``"ack"``, ``"hold"``, an exception to fail the ack with,
    or :class:`Raise` (an exception ``send`` itself raises, as aiokafka does for a
    record over ``max_request_size``)."""

    outcome: Callable[[Send], Any] = lambda s: "ack"
    sends: list[Send] = field(default_factory=list)

    async def send(self, topic: str, *, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        s = Send(topic, key, value, list(headers), fut)
        self.sends.append(s)
        result = self.outcome(s)
        if isinstance(result, Raise):
            raise result.error
        if result == "ack":
            fut.set_result(("metadata", topic))
        elif isinstance(result, BaseException):
            fut.set_exception(result)
        return fut


class BrokerDown(Exception):
    pass


@dataclass
class Raise:
    error: BaseException


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
             metrics: OrdersMetrics | None = None, **settings: Any) -> tuple[Relay, FakeProducer]:
        s = OrdersSettings(
            relay_id=relay_id, relay_batch_size=settings.pop("relay_batch_size", 100),
            relay_backoff_base=settings.pop("relay_backoff_base", BASE), relay_backoff_max=60.0,
            relay_send_timeout=settings.pop("relay_send_timeout", 5.0),
            database_url="sqlite:///unused.db", **settings,
        )
        relay = Relay(db, s, metrics or OrdersMetrics(), clock=clock or Clock(T0))
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
    # Nothing should happen now (both acks are held): 20 ms is many turns of the loop
    # for a round whose only awaits left are the acks and the database's threads.
    await asyncio.sleep(0.02)
    assert not task.done()
    assert {r["status"] for r in (await table(db)).values()} == {"pending"}

    clock.now = T0 + 3
    producer.sends[1].ack.set_result("meta")
    await asyncio.sleep(0.02)  # as above: time enough for a round that does not wait for both
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


@pytest.mark.parametrize("step", [600.0, 400 * 86400.0], ids=["10 minutes", "400 days"])
async def test_a_relay_restarted_with_its_clock_stepped_back_publishes_at_once(
        db: SqliteDatabase, make_relay: Any, step: float) -> None:
    """Rows written before the restart (the API's clock at T0) and a row in backoff from the
    relay's last life: the relay that starts with its clock ``step`` behind publishes all of
    them in its first round — not once its clock is back at T0 (rule: "Time" in orders.outbox)."""
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    before, _ = make_relay(producer=FakeProducer(outcome=lambda s: BrokerDown("x") if s.key == b"o-a" else "ack"))
    assert await before.round() == 1
    assert (await table(db))[a]["next_retry_at"] > T0  # o-a waits for its backoff
    c = await add(db, created("o-c"))  # written after, still by the clock at T0
    before.lock.release()  # its process ends

    after, producer = make_relay(clock=Clock(T0 - step))
    assert await after.round() == 2
    assert sorted(s.key for s in producer.sends) == [b"o-a", b"o-c"]
    t = await table(db)
    assert t[a]["status"] == t[b]["status"] == t[c]["status"] == "sent"


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
    relay, producer = make_relay(relay_batch_size=2, relay_in_flight=1)
    assert await relay.round() == 2
    assert [s.headers[0][1].decode() for s in producer.sends] == ids[:2]
    assert await relay.round() == 1
    assert [s.headers[0][1].decode() for s in producer.sends] == ids


async def test_a_round_fills_up_to_relay_in_flight_batches(db: SqliteDatabase, make_relay: Any) -> None:
    ids = [await add(db, created(f"o-{i}")) for i in range(7)]
    relay, producer = make_relay(relay_batch_size=2, relay_in_flight=3)
    assert await relay.round() == 6  # three batches of two
    assert [s.headers[0][1].decode() for s in producer.sends] == ids[:6]
    assert await relay.round() == 1
    assert await relay.round() == 0
    assert {r["status"] for r in (await table(db)).values()} == {"sent"}


async def test_a_batch_ends_at_relay_batch_bytes_but_a_larger_row_goes_alone(db: SqliteDatabase,
                                                                             make_relay: Any) -> None:
    # Rows of ~700 bytes (the setting's floor is 1024 bytes).
    ids = [await add(db, created(f"o-{i}"), headers=[("x-pad", "p" * 400)]) for i in range(5)]
    one = outbox.row_bytes((await _claim_all(db))[0])
    assert 2 * one + 1 >= 1024
    # Room for two rows a batch: five rows are three batches (2 + 2 + 1) in one round.
    relay, producer = make_relay(relay_batch_size=100, relay_batch_bytes=2 * one + 1, relay_in_flight=3)
    batches: list[int] = []
    real_publish = relay._publish

    async def counted(rows: list[outbox.OutboxRow]) -> Any:
        batches.append(len(rows))
        return await real_publish(rows)

    relay._publish = counted  # type: ignore[method-assign]
    assert await relay.round() == 5
    assert batches == [2, 2, 1]
    assert [s.headers[0][1].decode() for s in producer.sends] == ids
    # One row over the budget is still published, in a batch of its own.
    big = await add(db, created("o-big"), headers=[("x-pad", "p" * 3000)])
    tiny, _ = make_relay(relay_id="relay-b", relay_batch_size=100, relay_batch_bytes=1024, relay_in_flight=1)
    relay.lock.release()
    assert await tiny.round() == 1
    assert (await table(db))[big]["status"] == "sent"


async def _claim_all(db: SqliteDatabase) -> list[outbox.OutboxRow]:
    async with db.transaction() as tx:
        return await outbox.claim(tx, now=T0, limit=100, skip_locked=False, max_delay=60.0)


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


# -- the SQLite relay lock -------------------------------------------------------------------


async def test_a_relay_without_the_lock_publishes_nothing_until_the_holder_lets_go(
        db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    holder = relay_module.RelayLock(f"{db.path}.relay-lock", "someone-else")
    assert holder.try_acquire()
    relay, producer = make_relay()

    assert await relay.round() == 0
    assert producer.sends == [] and not relay.lock.held
    assert (await table(db))[a]["status"] == "pending"

    # The holder's descriptor closes (what the kernel does when its process dies):
    # the next round takes over, whatever the clock says.
    holder.release()
    assert await relay.round() == 1
    assert relay.lock.held
    assert (await table(db))[a]["status"] == "sent"


async def test_two_relays_one_lock_however_long_the_holder_is_silent(db: SqliteDatabase, make_relay: Any) -> None:
    """No time lets a second relay in while the first lives: a paused holder (SIGSTOP,
    a long GC, a slow disk) cannot find on waking that another relay published its rows."""
    await add(db, created("o-a"))
    clock = Clock(T0)
    first, p1 = make_relay("relay-a", clock=clock)
    second, p2 = make_relay("relay-b", clock=clock)

    assert await first.round() == 1
    b = await add(db, created("o-b"))
    clock.now = T0 + 10**6  # any lease would long have expired
    assert await second.round() == 0
    assert p2.sends == []
    assert await first.round() == 1
    assert (await table(db))[b]["status"] == "sent"
    assert [s.key for s in p1.sends] == [b"o-a", b"o-b"]


async def test_a_holder_paused_mid_publish_past_any_lease_is_not_joined_by_a_second_relay(
        db: SqliteDatabase, make_relay: Any) -> None:
    """The hazard of a time-limited lease: relay A has sent a row and waits for its ack
    when it is paused (SIGSTOP) past the lease; B finds the lease expired, claims the
    still-pending row and publishes it; A wakes and its send goes out too. With the
    lock, B cannot take over while A lives, however long A is silent."""
    a = await add(db, created("o-a"))
    clock = Clock(T0)
    first, p1 = make_relay("relay-a", clock=clock, producer=FakeProducer(outcome=lambda s: "hold"))
    second, p2 = make_relay("relay-b", clock=clock)
    round_a = asyncio.ensure_future(first.round())
    await until(lambda: len(p1.sends) == 1)  # A is mid-publish: paused here
    clock.now = T0 + 10**6
    assert await second.round() == 0
    p1.sends[0].ack.set_result(("metadata", "events.order.created.v1"))  # A wakes
    assert await round_a == 1
    assert [s.key for s in p1.sends + p2.sends] == [b"o-a"]
    assert (await table(db))[a]["status"] == "sent"


async def test_the_lock_is_released_when_the_relay_stops_and_names_its_holder(
        db: SqliteDatabase, make_relay: Any) -> None:
    relay, producer = make_relay("relay-a", relay_poll_interval=60.0)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: relay.lock.held)
        assert Path(relay.lock.path).read_text().startswith("relay-a pid ")
        other = relay_module.RelayLock(relay.lock.path, "relay-b")
        assert not other.try_acquire()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not relay.lock.held
    assert other.try_acquire()
    other.release()


# -- housekeeping and the run loop -----------------------------------------------------------


async def test_housekeeping_deletes_old_sent_rows_and_refresh_sets_the_gauges(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"), now=T0 - 7200)
    b = await add(db, created("o-b"), now=T0 - 30)
    async with db.transaction() as tx:
        await outbox.mark_sent(tx, [a], now=T0 - 3601)
    relay, _ = make_relay(outbox_retention=3600.0)

    await relay._housekeeping()
    assert set(await table(db)) == {b}
    await relay.refresh_gauges()
    assert sample(relay, "outbox_pending_rows") == 1
    assert sample(relay, "outbox_oldest_pending_age_seconds") == pytest.approx(30)


async def test_housekeeping_deletes_in_short_transactions_that_let_requests_in_between(
        db: SqliteDatabase, make_relay: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retention's worth of sent rows is deleted DELETE_CHUNK rows per transaction (one
    transaction would hold the write lock, and on SQLite the event loop, for all of them): a
    request arriving during the first chunk's transaction takes its turn before the next chunk."""
    monkeypatch.setattr(outbox, "DELETE_CHUNK", 2)
    rows = [await add(db, created(f"o-{i}"), now=T0 - 7200) for i in range(5)]
    async with db.transaction() as tx:
        await outbox.mark_sent(tx, rows, now=T0 - 3601)
    relay, _ = make_relay(outbox_retention=3600.0)
    order: list[str] = []
    requests: list[asyncio.Task[None]] = []

    async def request() -> None:
        async with db.transaction() as tx:
            order.append("request")
            await outbox.add_event(tx, created("o-request"), now=T0)
    real_delete = outbox.delete_sent_before

    async def delete(tx: Any, cutoff: float, *, limit: int | None = None) -> int:
        n = await real_delete(tx, cutoff, limit=limit)
        order.append(f"delete {n}")
        if len(order) == 1:  # a request arrives while the first chunk's transaction is open
            requests.append(asyncio.create_task(request()))
        return n

    monkeypatch.setattr(outbox, "delete_sent_before", delete)
    await relay._housekeeping()
    await requests[0]
    assert order == ["delete 2", "request", "delete 2", "delete 1"]
    assert len(await table(db)) == 1  # the request's row


async def test_notify_wakes_the_running_relay(db: SqliteDatabase, make_relay: Any) -> None:
    relay, producer = make_relay(relay_poll_interval=60.0)
    rounds = 0
    real_round = relay.round

    async def counted() -> int:
        nonlocal rounds
        published = await real_round()
        rounds += 1
        return published

    relay.round = counted  # type: ignore[method-assign]
    task = asyncio.create_task(relay.run())
    try:
        # The first (empty) round is over: from now on only notify() or the 60 s poll
        # starts another, so the row below is published only if notify() wakes it.
        await until(lambda: rounds == 1)
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


async def test_an_orders_next_event_goes_out_in_the_round_after_without_a_wake(
        db: SqliteDatabase, make_relay: Any) -> None:
    """An order's second event cannot be claimed beside its first; the round after the
    first's is published claims it at once — not at the next wake or poll (60 s here)."""
    c = await add(db, created("o-a"))
    p = await add(db, paid("o-a"))
    relay, producer = make_relay(relay_poll_interval=60.0)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: len(producer.sends) == 2)
        assert [s.headers[0][1].decode() for s in producer.sends] == [c, p]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- one bad row is one row: terminal failures ---------------------------------------------


TOO_LARGE = MessageSizeTooLargeError("The message is 1048733 bytes when serialized which is larger than the maximum")


async def test_one_row_that_send_refuses_does_not_fail_the_other_ten(db: SqliteDatabase, make_relay: Any) -> None:
    """The issue: one bad row among eleven claimed gave "11 of 11 rows failed to publish"."""
    ids = [await add(db, created(f"o-{i}")) for i in range(11)]
    bad = ids[4]
    relay, producer = make_relay(producer=FakeProducer(
        outcome=lambda s: Raise(TOO_LARGE) if s.key == b"o-4" else "ack"))

    assert await relay.round() == 10
    t = await table(db)
    assert [i for i in ids if t[i]["status"] == "sent"] == [i for i in ids if i != bad]
    assert t[bad]["status"] == "failed"
    assert t[bad]["attempts"] == 1
    assert t[bad]["last_error"].startswith("MessageSizeTooLargeError: ")
    assert len(producer.sends) == 11  # every row was tried, after the bad one too
    assert sample(relay, "outbox_published_total") == 10
    assert sample(relay, "outbox_publish_failures_total") == 1
    # Given up: never claimed again.
    assert await relay.round() == 0
    assert len(producer.sends) == 11


async def test_a_given_up_row_no_longer_holds_back_its_orders_next_row(db: SqliteDatabase, make_relay: Any) -> None:
    c = await add(db, created("o-a"))
    p = await add(db, paid("o-a"))
    relay, producer = make_relay(producer=FakeProducer(
        outcome=lambda s: Raise(TOO_LARGE) if s.topic == "events.order.created.v1" else "ack"))

    assert await relay.round() == 0
    assert await relay.round() == 1
    t = await table(db)
    assert (t[c]["status"], t[p]["status"]) == ("failed", "sent")
    assert [s.topic for s in producer.sends] == ["events.order.created.v1", "events.order.paid.v1"]


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(MessageSizeTooLargeError("broker: MESSAGE_SIZE_TOO_LARGE"), id="broker-too-large"),
        pytest.param(RecordTooLargeError("record too large"), id="record-too-large"),
        pytest.param(InvalidTopicError("INVALID_TOPIC"), id="invalid-topic"),
    ],
)
async def test_an_ack_error_that_waiting_cannot_fix_gives_the_row_up(db: SqliteDatabase, make_relay: Any,
                                                                      error: BaseException) -> None:
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    relay, _ = make_relay(producer=FakeProducer(outcome=lambda s: error if s.key == b"o-a" else "ack"))
    assert await relay.round() == 1
    t = await table(db)
    assert t[a]["status"] == "failed" and t[a]["last_error"].startswith(type(error).__name__)
    assert t[b]["status"] == "sent"


async def test_a_type_error_from_send_is_terminal_for_its_row_only(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    relay, _ = make_relay(producer=FakeProducer(
        outcome=lambda s: Raise(TypeError("value must be bytes")) if s.key == b"o-a" else "ack"))
    assert await relay.round() == 1
    t = await table(db)
    assert t[a]["status"] == "failed" and t[a]["last_error"] == "TypeError: value must be bytes"
    assert t[b]["status"] == "sent"


async def test_an_unreadable_row_is_given_up_without_a_send(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    async with db.transaction() as tx:
        await tx.execute("UPDATE outbox SET headers = 'not json' WHERE id = ?", (a,))
    relay, producer = make_relay()
    assert await relay.round() == 1
    t = await table(db)
    assert t[a]["status"] == "failed" and t[a]["last_error"].startswith("RowUnreadable: unreadable row")
    assert t[b]["status"] == "sent"
    assert [s.key for s in producer.sends] == [b"o-b"]


async def test_a_transient_send_error_keeps_the_backoff_for_that_row_only(db: SqliteDatabase, make_relay: Any) -> None:
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    relay, _ = make_relay(producer=FakeProducer(
        outcome=lambda s: Raise(KafkaConnectionError("connection reset")) if s.key == b"o-a" else "ack"))
    assert await relay.round() == 1
    t = await table(db)
    assert t[a]["status"] == "pending" and t[a]["attempts"] == 1 and t[a]["next_retry_at"] > T0
    assert t[a]["last_error"].startswith("KafkaConnectionError")
    assert t[b]["status"] == "sent"


async def test_given_up_rows_are_counted_in_stats_and_the_gauge(db: SqliteDatabase, make_relay: Any) -> None:
    await add(db, created("o-a"))
    await add(db, created("o-b"))
    relay, _ = make_relay(producer=FakeProducer(outcome=lambda s: Raise(TOO_LARGE) if s.key == b"o-a" else "ack"))
    await relay.round()
    await relay.refresh_gauges()
    async with db.transaction() as tx:
        st = await outbox.stats(tx, now=T0)
    assert (st.pending, st.sent, st.failed, st.failed_terminal) == (0, 1, 0, 1)
    assert sample(relay, "outbox_failed_rows") == 1
    assert sample(relay, "outbox_pending_rows") == 0


async def test_the_gauge_timer_reads_only_pending_and_given_up_rows(db: SqliteDatabase, make_relay: Any) -> None:
    """Every OUTBOX_STATS_INTERVAL the gauges are read, on SQLite on the event loop: no
    statement of theirs may scan the table, whose sent rows (kept for OUTBOX_RETENTION) are
    millions at a sustained rate; they go through the status indexes."""
    await add(db, created("o-a"))
    relay, _ = make_relay()
    statements: list[str] = []
    assert db._conn is not None
    db._conn.set_trace_callback(statements.append)
    await relay.refresh_gauges()
    db._conn.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert reads
    async with db.transaction() as tx:
        for sql in reads:
            plan = [r[3] for r in await tx.fetchall("EXPLAIN QUERY PLAN " + sql)]
            assert not any(step.startswith("SCAN") for step in plan), (sql, plan)
            assert "status='sent'" not in sql.replace(" ", ""), sql
    assert sample(relay, "outbox_pending_rows") == 1


# -- each failed row is logged once ----------------------------------------------------------------


def relay_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "orders.relay" and r.levelno >= logging.WARNING]


async def test_a_retried_row_is_logged_once_with_its_reason_and_ids(db: SqliteDatabase, make_relay: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    a = await add(db, created("o-a"))
    clock = Clock(T0)
    relay, _ = make_relay(clock=clock, producer=FakeProducer(outcome=lambda s: BrokerDown("leader not available")))
    caplog.set_level(logging.INFO)
    for _ in range(4):  # four failed attempts
        await relay.round()
        clock.now = (await table(db))[a]["next_retry_at"]
    assert (await table(db))[a]["attempts"] == 4
    [record] = relay_records(caplog)
    assert "BrokerDown: leader not available" in record.getMessage()
    assert (record.order_id, record.event_id, record.topic, record.event_type) == (  # type: ignore[attr-defined]
        "o-a", a, "events.order.created.v1", "OrderCreated")


async def test_a_given_up_row_is_logged_once_as_an_error(db: SqliteDatabase, make_relay: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    await add(db, created("o-a"))
    relay, _ = make_relay(producer=FakeProducer(outcome=lambda s: Raise(TOO_LARGE)))
    caplog.set_level(logging.INFO)
    await relay.round()
    await relay.round()
    [record] = relay_records(caplog)
    assert record.levelno == logging.ERROR and "MessageSizeTooLargeError" in record.getMessage()
    assert record.order_id == "o-a"  # type: ignore[attr-defined]


async def test_no_broker_is_logged_once_per_outage_not_per_row(db: SqliteDatabase, make_relay: Any,
                                                               producers: dict[int, Any],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    for i in range(5):
        await add(db, created(f"o-{i}"))
    clock = Clock(T0)
    relay, _ = make_relay(clock=clock, producer=BrokerDown("no brokers"))
    caplog.set_level(logging.INFO)
    for step in range(3):
        clock.now = T0 + 1000 * step
        await relay.round()
    [record] = relay_records(caplog)
    assert "cannot reach the broker" in record.getMessage() and "no brokers" in record.getMessage()
    producers[id(relay)] = FakeProducer()
    clock.now = T0 + 5000
    assert await relay.round() == 5
    assert any(r.getMessage() == "relay: broker reachable again" for r in caplog.records)


# -- the producer's size limit ---------------------------------------------------------------


async def test_the_producer_max_request_size_comes_from_the_setting(db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    class Producer:
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

    async def no_topics(self: Relay) -> None:
        self._topics_ready = True

    monkeypatch.setattr(relay_module, "AIOKafkaProducer", Producer)
    monkeypatch.setattr(Relay, "_create_topics", no_topics)
    default = Relay(db, OrdersSettings(database_url="sqlite:///unused.db"), OrdersMetrics())
    await default._ensure_producer()
    small = Relay(db, OrdersSettings(database_url="sqlite:///unused.db", relay_max_request_bytes=65536), OrdersMetrics())
    await small._ensure_producer()
    assert [m["max_request_size"] for m in made] == [1024 * 1024, 65536]


# -- gauges on a timer; the relay's own HTTP face ---------------------------------------------------


async def test_the_gauges_are_refreshed_on_a_timer_while_a_round_hangs(db: SqliteDatabase, make_relay: Any) -> None:
    """Nobody calls /outbox/stats and the relay is stuck waiting for acks: the gauges
    still follow the table."""
    clock = Clock(T0)
    relay, producer = make_relay(clock=clock, producer=FakeProducer(outcome=lambda s: "hold"),
                                 outbox_stats_interval=0.01, relay_send_timeout=10.0)
    await add(db, created("o-a"))
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: len(producer.sends) == 1)
        await until(lambda: relay.metrics.registry.get_sample_value("outbox_pending_rows") == 1)
        await add(db, created("o-b"))
        clock.now = T0 + 12
        # (A refresh that read o-b before the clock moved may set pending 2 with age 0 first.)
        await until(lambda: relay.metrics.registry.get_sample_value("outbox_pending_rows") == 2
                    and relay.metrics.registry.get_sample_value("outbox_oldest_pending_age_seconds") == 12)
        assert not producer.sends[0].ack.done()  # the round is still waiting
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_relay_process_serves_metrics_and_health(db: SqliteDatabase, make_relay: Any) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    await add(db, created("o-a"))
    relay, _ = make_relay(metrics=OrdersMetrics(api=False, relay=True))  # as `python -m orders relay`
    await relay.round()
    await relay.refresh_gauges()
    async with TestClient(TestServer(relay_app(relay))) as client:
        health = await client.get("/health")
        assert health.status == 200
        assert (await health.json())["status"] == "ok"
        assert (await health.json())["lease"] == "held"
        text = await (await client.get("/metrics")).text()
    assert "outbox_published_total 1.0" in text
    assert "outbox_pending_rows 0.0" in text
    assert "outbox_failed_rows 0.0" in text
    assert "orders_http_requests" not in text  # no API in this process


async def test_a_failing_round_is_logged_once_per_outage(db: SqliteDatabase, make_relay: Any,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    relay, _ = make_relay(relay_poll_interval=0.001, relay_backoff_base=0.001)
    calls = 0
    real_round = Relay._round

    async def flaky(self: Relay) -> int:
        nonlocal calls
        calls += 1
        if calls <= 20:
            raise OSError("database is locked")
        return await real_round(self)

    monkeypatch.setattr(Relay, "_round", flaky)
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(relay.run())
    try:
        await until(lambda: calls > 25)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    [failure] = relay_records(caplog)
    assert "database is locked" in failure.getMessage()
    assert any(r.getMessage() == "relay: rounds succeed again" for r in caplog.records)


# -- several batches in flight (rules 1-5 in orders/relay.py) ----------------------------------


def key_of(send: Send) -> str:
    return send.key.decode()


async def test_a_batch_in_flight_is_not_claimed_again_by_the_next_lane(db: SqliteDatabase, make_relay: Any) -> None:
    """Rule 3: the second lane's claim leaves out the row the first lane has in flight."""
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    relay, producer = make_relay(producer=FakeProducer(outcome=lambda s: "hold"), relay_batch_size=1,
                                 relay_in_flight=2)
    task = asyncio.create_task(relay.round())
    await until(lambda: len(producer.sends) == 2)
    assert [s.headers[0][1].decode() for s in producer.sends] == [a, b]
    for s in producer.sends:
        s.ack.set_result("meta")
    assert await asyncio.wait_for(task, 2) == 2
    assert await relay.round() == 0
    assert len(producer.sends) == 2


async def test_a_batch_failing_while_a_later_one_succeeded_keeps_each_orders_order(
        db: SqliteDatabase, make_relay: Any) -> None:
    """Rules 1 and 2: o-a's first event is in flight in lane 1 when lane 2 claims; lane 2
    must not take o-a's second event (it would overtake the first, which then fails). Lane
    2's batch is acked and marked while lane 1 still waits; lane 1 then fails alone."""
    a1 = await add(db, created("o-a"))
    a2 = await add(db, paid("o-a"))
    b = await add(db, created("o-b"))
    clock = Clock(T0)
    relay, producer = make_relay(clock=clock, relay_batch_size=1, relay_in_flight=2,
                                 producer=FakeProducer(outcome=lambda s: "hold" if s.key == b"o-a" else "ack"))
    task = asyncio.create_task(relay.round())
    await until(lambda: len(producer.sends) == 2)
    assert [s.headers[0][1].decode() for s in producer.sends] == [a1, b]  # not a2

    async def b_sent() -> bool:
        return (await table(db))[b]["status"] == "sent"
    async with asyncio.timeout(2):
        while not await b_sent():
            await asyncio.sleep(0.002)
    assert not task.done()  # lane 1 still waits for o-a's ack: the later batch was marked first

    producer.sends[0].ack.set_exception(BrokerDown("leader not available"))
    assert await asyncio.wait_for(task, 2) == 1
    t = await table(db)
    assert t[a1]["status"] == "pending" and t[a1]["attempts"] == 1
    assert t[a2]["status"] == "pending" and t[a2]["attempts"] == 0  # never sent
    assert t[b]["status"] == "sent"

    producer.outcome = lambda s: "ack"
    clock.now = t[a1]["next_retry_at"]
    # o-a's first event, then its second — in the same round only if the first was
    # marked before the next lane's claim (timing), never both in flight at once.
    published = await relay.round()
    published += await relay.round() if published < 2 else 0
    assert published == 2
    assert [s.headers[0][1].decode() for s in producer.sends] == [a1, b, a1, a2]
    assert {r["status"] for r in (await table(db)).values()} == {"sent"}


class ResetProducer:
    """A producer of the kind the relay makes, whose ``stop`` cancels the sends it has not
    acknowledged (as a producer torn down with batches in flight)."""

    made: ClassVar[list[ResetProducer]] = []
    #: the next producers' start() waits for ``may_start``
    hold_start: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        self.held: list[asyncio.Future[Any]] = []
        self.sends: list[bytes] = []
        self.stopped = False
        self.started = asyncio.Event()
        self.may_start = asyncio.Event()
        if not ResetProducer.hold_start:
            self.may_start.set()
        ResetProducer.made.append(self)

    async def start(self) -> None:
        self.started.set()
        await self.may_start.wait()

    async def stop(self) -> None:
        self.stopped = True
        for f in self.held:
            f.cancel()

    async def send(self, topic: str, *, key: bytes, value: bytes, headers: Any) -> asyncio.Future[Any]:
        self.sends.append(key)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if len(ResetProducer.made) > 1:  # the producer after the reset acks everything
            fut.set_result("meta")
            return fut
        if key == b"o-a":  # lane 1: fails once lane 2's send is out, which resets the producer
            await until(lambda: b"o-b" in self.sends)
            raise KafkaConnectionError("connection reset")
        self.held.append(fut)  # lane 2: its ack never comes from this producer
        return fut


@pytest.fixture
def reset_producers(monkeypatch: pytest.MonkeyPatch) -> list[ResetProducer]:
    async def no_topics(self: Relay) -> None:
        self._topics_ready = True

    ResetProducer.made = []
    ResetProducer.hold_start = False
    monkeypatch.setattr(relay_module, "AIOKafkaProducer", ResetProducer)
    monkeypatch.setattr(Relay, "_create_topics", no_topics)
    return ResetProducer.made


async def test_a_producer_reset_with_a_batch_in_flight_leaves_its_rows_pending(
        db: SqliteDatabase, reset_producers: list[ResetProducer]) -> None:
    """Rule 5: lane 1's send error resets the producer while lane 2's batch is in flight
    on it; the reset cancels lane 2's send. Lane 2's row is not sent (not marked, and the
    round does not die of the cancelled future); the next round publishes both once."""
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    clock = Clock(T0)
    s = OrdersSettings(database_url="sqlite:///unused.db", relay_batch_size=1, relay_in_flight=2,
                       relay_backoff_base=BASE, relay_send_timeout=5.0)
    relay = Relay(db, s, OrdersMetrics(), clock=clock)
    try:
        assert await asyncio.wait_for(relay.round(), 4) == 0
        first = reset_producers[0]
        assert first.stopped and first.held[0].cancelled()
        t = await table(db)
        assert t[a]["status"] == t[b]["status"] == "pending"
        assert t[a]["attempts"] == t[b]["attempts"] == 1
        assert t[a]["last_error"].startswith("KafkaConnectionError")
        assert t[b]["last_error"].startswith("SendCancelled")

        clock.now = max(t[a]["next_retry_at"], t[b]["next_retry_at"])
        assert await asyncio.wait_for(relay.round(), 4) == 2
        assert len(reset_producers) == 2 and reset_producers[1].sends == [b"o-a", b"o-b"]
        assert {r["status"] for r in (await table(db)).values()} == {"sent"}
    finally:
        await relay._reset_producer()
        relay.lock.release()


async def test_two_lanes_share_one_producer_and_reset_only_the_one_they_used(
        db: SqliteDatabase, reset_producers: list[ResetProducer]) -> None:
    """Rule 4: two lanes that find no producer while one is starting get that one; a lane
    whose send failed on the old producer does not stop the new one."""
    relay = Relay(db, OrdersSettings(database_url="sqlite:///unused.db"), OrdersMetrics())
    ResetProducer.hold_start = True  # the first lane's producer is starting when the second lane comes
    first = asyncio.create_task(relay._ensure_producer())
    await until(lambda: bool(reset_producers) and reset_producers[0].started.is_set())
    second = asyncio.create_task(relay._ensure_producer())
    for _ in range(3):  # let the second lane run as far as it can (no time passes)
        await asyncio.sleep(0)
    ResetProducer.hold_start = False
    for p in reset_producers:
        p.may_start.set()
    p1, p2 = await asyncio.wait_for(asyncio.gather(first, second), 2)
    assert p1 is p2 and len(reset_producers) == 1

    await relay._reset_producer(p1)  # a lane resets the producer it used
    assert p1.stopped
    p3 = await relay._ensure_producer()
    await relay._reset_producer(p1)  # a second lane that used p1 too: p3 is not its to stop
    assert not p3.stopped and relay._producer is p3
    await relay._reset_producer()
    assert p3.stopped
