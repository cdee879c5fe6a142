"""orders.outbox on SQLite: claim (head row per order), mark_sent/mark_failed,
delete_sent_before, stats and backoff (the relay's SQLite lock: test_orders_relay.py)."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orders import outbox
from orders.db import SqliteDatabase
from streams.events import Event, OrderCancelled, OrderCreated, OrderItem, OrderPaid

T0 = 1_700_000_000.0


def created(order_id: str) -> OrderCreated:
    return OrderCreated(order_id=order_id, user_id="u-1", items=(OrderItem(sku="sku-1", qty=2),),
                        amount=Decimal("9.50"))


def paid(order_id: str) -> OrderPaid:
    return OrderPaid(order_id=order_id, user_id="u-1", amount=Decimal("9.50"))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    d = SqliteDatabase(str(tmp_path / "orders.db"))
    await d.setup()
    yield d
    await d.close()


async def add(db: SqliteDatabase, event: Event, *, now: float = T0, headers: Any = ()) -> str:
    async with db.transaction() as tx:
        return await outbox.add_event(tx, event, now=now, headers=headers)


MAX_DELAY = 60.0


async def claim(db: SqliteDatabase, *, now: float = T0, limit: int = 100) -> list[outbox.OutboxRow]:
    async with db.transaction() as tx:
        return await outbox.claim(tx, now=now, limit=limit, skip_locked=False, max_delay=MAX_DELAY)


async def claimed_ids(db: SqliteDatabase, *, now: float = T0, limit: int = 100) -> list[str]:
    return [r.id for r in await claim(db, now=now, limit=limit)]


async def table(db: SqliteDatabase) -> dict[str, dict[str, Any]]:
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT id, status, attempts, next_retry_at, sent_at, last_error, created_at FROM outbox ORDER BY position"
        )
    return {
        r[0]: {"status": r[1], "attempts": r[2], "next_retry_at": r[3], "sent_at": r[4],
               "last_error": r[5], "created_at": r[6]}
        for r in rows
    }


async def sent(db: SqliteDatabase, ids: list[str], *, now: float = T0) -> None:
    async with db.transaction() as tx:
        await outbox.mark_sent(tx, ids, now=now)


async def failed(db: SqliteDatabase, row: outbox.OutboxRow, error: str = "boom", *, now: float = T0,
                 delay: float = 10.0) -> None:
    async with db.transaction() as tx:
        await outbox.mark_failed(tx, row, error, now=now, delay=delay)


# -- add_event / claim -----------------------------------------------------------------


async def test_added_event_is_claimed_with_its_topic_key_payload_and_headers(db: SqliteDatabase) -> None:
    event = created("o-1")
    event_id = await add(db, event, headers=[("traceparent", "00-abc-01"), ("source", "api")])
    assert event_id == str(event.event_id)

    [row] = await claim(db)
    assert row.id == event_id
    assert row.aggregate_id == "o-1"
    assert row.topic == "events.order.created.v1"
    assert row.key == b"o-1"
    assert OrderCreated.model_validate_json(row.payload) == event
    assert row.headers == (("traceparent", b"00-abc-01"), ("source", b"api"))
    assert row.attempts == 0
    assert row.created_at == T0
    assert (await table(db))[event_id]["status"] == "pending"


async def test_claim_returns_only_the_first_pending_row_of_each_order(db: SqliteDatabase) -> None:
    a1 = await add(db, created("o-a"))
    b1 = await add(db, created("o-b"))
    a2 = await add(db, paid("o-a"))
    await add(db, paid("o-b"))
    await add(db, OrderCancelled(order_id="o-a"))
    c1 = await add(db, created("o-c"))

    assert await claimed_ids(db) == [a1, b1, c1]
    assert a2 not in await claimed_ids(db)


async def test_second_event_is_claimed_once_the_first_is_sent(db: SqliteDatabase) -> None:
    a1 = await add(db, created("o-a"))
    a2 = await add(db, paid("o-a"))
    a3 = await add(db, OrderCancelled(order_id="o-a"))

    assert await claimed_ids(db) == [a1]
    await sent(db, [a1])
    assert await claimed_ids(db) == [a2]
    await sent(db, [a2])
    assert await claimed_ids(db) == [a3]
    await sent(db, [a3])
    assert await claimed_ids(db) == []


async def test_first_row_waiting_for_its_retry_blocks_the_orders_later_rows(db: SqliteDatabase) -> None:
    await add(db, created("o-a"))
    a2 = await add(db, paid("o-a"))
    [head] = await claim(db)
    await failed(db, head, now=T0, delay=30.0)
    b1 = await add(db, created("o-b"), now=T0 + 1)

    # o-a's head is not due and its paid event must not overtake it; o-b is unaffected.
    assert await claimed_ids(db, now=T0 + 10) == [b1]
    assert a2 not in await claimed_ids(db, now=T0 + 29.9)
    # Once the retry is due, the head (not the paid event) comes back, before o-b (position).
    assert await claimed_ids(db, now=T0 + 30) == [head.id, b1]


async def test_claim_respects_next_retry_at(db: SqliteDatabase) -> None:
    a1 = await add(db, created("o-a"))
    [row] = await claim(db)
    await failed(db, row, "timeout", now=T0, delay=5.0)
    assert await claimed_ids(db, now=T0 + 4.999) == []
    assert await claimed_ids(db, now=T0 + 5) == [a1]  # due at exactly next_retry_at


async def test_a_new_row_is_due_at_once_whatever_the_claiming_clock_says(db: SqliteDatabase) -> None:
    """Written by a clock ahead of the claimer's (another host, or the claimer restarted with
    its clock stepped back): due at once, not when the claimer's clock reaches the writer's."""
    a1 = await add(db, created("o-a"), now=T0)
    assert await claimed_ids(db, now=T0 - 600) == [a1]
    assert await claimed_ids(db, now=T0 - 400 * 86400) == [a1]


async def test_a_due_time_further_ahead_than_any_backoff_is_due_now(db: SqliteDatabase) -> None:
    """A clock stepped back after a row's backoff was set: the row is retried now, not after
    the step. Within MAX_DELAY (the longest backoff) the due time holds."""
    a1 = await add(db, created("o-a"))
    [row] = await claim(db)
    await failed(db, row, "timeout", now=T0, delay=MAX_DELAY)  # due at T0 + 60
    assert await claimed_ids(db, now=T0) == []
    assert await claimed_ids(db, now=T0 + 0.001) == []  # 59.999 s ahead: a backoff may do that
    assert await claimed_ids(db, now=T0 - 0.001) == [a1]  # 60.001 s ahead: a clock stepped back
    assert await claimed_ids(db, now=T0 - 600) == [a1]
    assert await claimed_ids(db, now=T0 - 400 * 86400) == [a1]


async def test_claim_orders_by_position_not_created_at(db: SqliteDatabase) -> None:
    # Inserted later, but with earlier timestamps (e.g. clock skew between API processes).
    ids = [await add(db, created(f"o-{i}"), now=T0 - i) for i in range(5)]
    assert await claimed_ids(db) == ids


async def test_claim_respects_limit(db: SqliteDatabase) -> None:
    ids = [await add(db, created(f"o-{i}")) for i in range(5)]
    assert await claimed_ids(db, limit=2) == ids[:2]
    assert await claimed_ids(db, limit=1) == ids[:1]
    assert await claimed_ids(db, limit=10) == ids


async def test_claim_ignores_sent_rows(db: SqliteDatabase) -> None:
    a1 = await add(db, created("o-a"))
    b1 = await add(db, created("o-b"))
    await sent(db, [a1])
    assert await claimed_ids(db) == [b1]


# -- mark_sent / mark_failed --------------------------------------------------------------


async def test_mark_sent_sets_status_and_sent_at_and_clears_the_error(db: SqliteDatabase) -> None:
    a1 = await add(db, created("o-a"))
    b1 = await add(db, created("o-b"))
    [row_a, _] = await claim(db)
    await failed(db, row_a, "timeout", now=T0, delay=1.0)

    await sent(db, [a1], now=T0 + 7)
    t = await table(db)
    assert t[a1]["status"] == "sent" and t[a1]["sent_at"] == T0 + 7 and t[a1]["last_error"] is None
    assert t[a1]["attempts"] == 1  # unchanged by mark_sent
    assert t[b1]["status"] == "pending" and t[b1]["sent_at"] is None


async def test_mark_sent_handles_more_ids_than_one_chunk(db: SqliteDatabase) -> None:
    async with db.transaction() as tx:
        ids = [await outbox.add_event(tx, created(f"o-{i}"), now=T0) for i in range(1203)]
    await sent(db, ids[:1202])
    t = await table(db)
    assert sum(1 for r in t.values() if r["status"] == "sent") == 1202
    assert t[ids[-1]]["status"] == "pending"


async def test_mark_sent_with_no_ids_changes_nothing(db: SqliteDatabase) -> None:
    a1 = await add(db, created("o-a"))
    await sent(db, [])
    assert (await table(db))[a1]["status"] == "pending"


async def test_mark_failed_counts_attempts_and_schedules_the_retry(db: SqliteDatabase) -> None:
    a1 = await add(db, created("o-a"))
    b1 = await add(db, created("o-b"))
    [row_a, _] = await claim(db)

    await failed(db, row_a, "KafkaTimeoutError: no ack", now=T0 + 1, delay=2.5)
    t = await table(db)
    assert t[a1]["status"] == "pending"
    assert t[a1]["attempts"] == 1
    assert t[a1]["next_retry_at"] == T0 + 3.5
    assert t[a1]["last_error"] == "KafkaTimeoutError: no ack"
    assert t[b1]["attempts"] == 0 and t[b1]["last_error"] is None and t[b1]["next_retry_at"] == 0

    await failed(db, row_a, "x" * 5000, now=T0 + 10, delay=4.0)
    t = await table(db)
    assert t[a1]["attempts"] == 2
    assert t[a1]["next_retry_at"] == T0 + 14
    assert t[a1]["last_error"] == "x" * 1000  # truncated


@pytest.mark.parametrize("made_before", [False, True])
async def test_a_claim_reads_pending_rows_in_order_instead_of_sorting_the_backlog(
        tmp_path: Path, made_before: bool) -> None:
    """The claim runs on the event loop inside a group (orders.db rule 7): it must cost its
    batch, not the backlog. With the old (status, next_retry_at, position) index SQLite sorted
    every due pending row on each claim; a database made before gets the new index at setup."""
    path = tmp_path / "orders.db"
    if made_before:
        old = sqlite3.connect(path)
        old.execute("CREATE TABLE outbox (position INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
                    " aggregate_id TEXT NOT NULL, topic TEXT NOT NULL, key BLOB, payload BLOB,"
                    " headers TEXT NOT NULL DEFAULT '[]', status TEXT NOT NULL DEFAULT 'pending',"
                    " attempts INTEGER NOT NULL DEFAULT 0, next_retry_at REAL NOT NULL, created_at REAL NOT NULL,"
                    " sent_at REAL, last_error TEXT)")
        old.execute("CREATE INDEX outbox_pending ON outbox (status, next_retry_at, position)")
        old.close()
    d = SqliteDatabase(str(path))
    await d.setup()
    try:
        async with d.transaction() as tx:
            plan = " / ".join(r[3] for r in await tx.fetchall("EXPLAIN QUERY PLAN " + outbox.CLAIM, (T0, T0 + 60, 500)))
    finally:
        await d.close()
    assert "TEMP B-TREE" not in plan and "outbox_claim" in plan, plan


# -- delete_sent_before -----------------------------------------------------------------


async def test_delete_sent_before_removes_only_old_sent_rows(db: SqliteDatabase) -> None:
    old = await add(db, created("o-old"), now=T0)
    edge = await add(db, created("o-edge"), now=T0)
    new = await add(db, created("o-new"), now=T0)
    pending = await add(db, created("o-pending"), now=T0 - 1000)  # old but never sent
    await sent(db, [old], now=T0 + 10)
    await sent(db, [edge], now=T0 + 100)
    await sent(db, [new], now=T0 + 200)

    async with db.transaction() as tx:
        removed = await outbox.delete_sent_before(tx, T0 + 100)
    assert removed == 1
    assert set(await table(db)) == {edge, new, pending}

    async with db.transaction() as tx:
        assert await outbox.delete_sent_before(tx, T0 + 10_000) == 2
    assert set(await table(db)) == {pending}


async def test_delete_sent_before_with_a_limit_removes_at_most_that_many_old_sent_rows(db: SqliteDatabase) -> None:
    old = [await add(db, created(f"o-{i}"), now=T0) for i in range(3)]
    new = await add(db, created("o-new"), now=T0)
    pending = await add(db, created("o-pending"), now=T0 - 1000)
    await sent(db, old, now=T0 + 10)
    await sent(db, [new], now=T0 + 200)
    async with db.transaction() as tx:
        assert await outbox.delete_sent_before(tx, T0 + 100, limit=2) == 2
    assert len(set(await table(db)) & set(old)) == 1
    async with db.transaction() as tx:
        assert await outbox.delete_sent_before(tx, T0 + 100, limit=2) == 1
    assert set(await table(db)) == {new, pending}


# -- stats ----------------------------------------------------------------------------


async def test_stats_of_an_empty_outbox(db: SqliteDatabase) -> None:
    async with db.transaction() as tx:
        st = await outbox.stats(tx, now=T0)
    assert st == outbox.OutboxStats(pending=0, sent=0, failed=0, oldest_pending_age_seconds=0.0)


async def test_stats_counts_pending_sent_failed_and_the_oldest_pending_age(db: SqliteDatabase) -> None:
    # The oldest row failed once, then was sent: neither "failed" nor in the pending age.
    old_sent = await add(db, created("o-s"), now=T0 - 500)
    [row_s] = await claim(db, now=T0 - 500)
    await failed(db, row_s, now=T0 - 500, delay=1)
    await sent(db, [old_sent], now=T0 - 400)
    await add(db, created("o-a"), now=T0 - 30)
    await add(db, paid("o-a"), now=T0 - 20)
    await add(db, created("o-b"), now=T0 - 10)
    heads = await claim(db, now=T0)
    [row_b] = [r for r in heads if r.aggregate_id == "o-b"]
    await failed(db, row_b, now=T0, delay=5)

    async with db.transaction() as tx:
        st = await outbox.stats(tx, now=T0 + 0.1234)
    assert st.pending == 3
    assert st.sent == 1
    assert st.failed == 1
    assert st.oldest_pending_age_seconds == pytest.approx(30.1234)
    assert st.as_dict() == {"pending": 3, "sent": 1, "failed": 1, "failed_terminal": 0,
                            "oldest_pending_age_seconds": 30.123}


async def test_stats_age_is_never_negative(db: SqliteDatabase) -> None:
    await add(db, created("o-a"), now=T0 + 60)  # written by a process whose clock is ahead
    async with db.transaction() as tx:
        st = await outbox.stats(tx, now=T0)
    assert st.pending == 1
    assert st.oldest_pending_age_seconds == 0.0


async def test_stats_age_of_a_row_created_at_epoch_zero(db: SqliteDatabase) -> None:
    """Regression: ``if oldest`` treated created_at == 0.0 as "no pending row"."""
    await add(db, created("o-a"), now=0.0)
    async with db.transaction() as tx:
        st = await outbox.stats(tx, now=42.0)
    assert st.oldest_pending_age_seconds == 42.0


# -- backoff ---------------------------------------------------------------------------


def test_backoff_doubles_with_each_attempt_until_the_cap() -> None:
    base, cap = 0.5, 60.0
    for seed in range(20):
        values = [outbox.backoff(a, base=base, cap=cap, rng=random.Random(seed)) for a in range(1, 12)]
        # Same random draw for every attempt: the un-capped values double exactly.
        for a in range(1, 7):  # 0.5 * 2^6 = 32 < 60
            assert values[a] == pytest.approx(2 * values[a - 1])
        # From attempt 9 on (0.5 * 2^8 = 128 > 60) the value no longer grows.
        assert values[8] == values[9] == values[10]
        assert values[10] < cap


def test_backoff_jitter_stays_within_half_to_one_of_the_unjittered_value() -> None:
    base, cap = 0.25, 10.0
    seen: set[float] = set()
    for seed in range(200):
        for attempts in (0, 1, 2, 3, 5, 8, 30):
            raw = min(cap, base * 2 ** max(attempts - 1, 0))
            value = outbox.backoff(attempts, base=base, cap=cap, rng=random.Random(seed))
            assert 0.5 * raw <= value < raw, (seed, attempts, value)
            if attempts == 30:
                seen.add(value)
    assert len(seen) > 150  # the jitter really varies with the draw


def test_backoff_first_attempts_use_the_base_and_the_cap_bounds_large_attempts() -> None:
    class Fixed(random.Random):
        def __init__(self, r: float) -> None:
            super().__init__()
            self.r = r

        def random(self) -> float:
            return self.r

    assert outbox.backoff(1, base=2.0, cap=100.0, rng=Fixed(0.0)) == 1.0
    assert outbox.backoff(0, base=2.0, cap=100.0, rng=Fixed(0.0)) == 1.0
    assert outbox.backoff(3, base=2.0, cap=100.0, rng=Fixed(0.0)) == 4.0
    assert outbox.backoff(1000, base=2.0, cap=100.0, rng=Fixed(0.0)) == 50.0
    assert outbox.backoff(1000, base=2.0, cap=100.0, rng=Fixed(0.999999)) == pytest.approx(100.0, rel=1e-5)
    assert outbox.backoff(1000, base=2.0, cap=100.0, rng=Fixed(0.999999)) < 100.0


# -- given up (status failed) and the size check ----------------------------------------------


async def test_a_given_up_row_leaves_pending_frees_its_order_and_is_counted(db: SqliteDatabase) -> None:
    c = await add(db, created("o-a"), now=T0 - 50)
    p = await add(db, paid("o-a"), now=T0 - 40)
    [row] = await claim(db)
    assert row.id == c
    async with db.transaction() as tx:
        await outbox.mark_given_up(tx, row, "MessageSizeTooLargeError: 2000000 bytes", now=T0)
    t = await table(db)
    assert t[c]["status"] == "failed" and t[c]["attempts"] == 1
    assert t[c]["last_error"] == "MessageSizeTooLargeError: 2000000 bytes"
    assert await claimed_ids(db) == [p]  # the order's next row is no longer held back
    async with db.transaction() as tx:
        st = await outbox.stats(tx, now=T0)
    assert (st.pending, st.failed, st.failed_terminal) == (1, 0, 1)
    assert st.oldest_pending_age_seconds == pytest.approx(40)
    # Retention deletes sent rows only: a given-up row stays until someone looks at it.
    async with db.transaction() as tx:
        assert await outbox.delete_sent_before(tx, T0 + 10**6) == 0


async def test_an_unreadable_row_is_claimed_with_its_error_and_does_not_break_the_claim(db: SqliteDatabase) -> None:
    a = await add(db, created("o-a"))
    b = await add(db, created("o-b"))
    async with db.transaction() as tx:
        await tx.execute("UPDATE outbox SET payload = NULL WHERE id = ?", (a,))
    rows = {r.id: r for r in await claim(db)}
    assert rows[a].error is not None and "TypeError" in rows[a].error
    assert rows[b].error is None and rows[b].payload


def test_record_size_is_the_producers_estimate_plus_the_margin() -> None:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    event = created("o-a")
    estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        b"o-a", event.to_bytes(), [("event_id", str(event.event_id).encode())])
    assert outbox.record_size(event) == estimate + outbox.ENVELOPE_MARGIN
    outbox.check_size(event, outbox.record_size(event))
    with pytest.raises(outbox.EventTooLarge, match="RELAY_MAX_REQUEST_BYTES"):
        outbox.check_size(event, outbox.record_size(event) - 1)
