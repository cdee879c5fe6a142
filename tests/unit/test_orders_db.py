"""orders.db.SqliteDatabase: commit on success, roll back on error, URL dispatch."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orders.db import PostgresDatabase, SqliteDatabase, open_database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    d = SqliteDatabase(str(tmp_path / "sub" / "orders.db"))
    await d.setup()
    yield d
    await d.close()


async def names(db: SqliteDatabase) -> list[str]:
    async with db.transaction() as tx:
        return [r[0] for r in await tx.fetchall("SELECT name FROM relay_lease ORDER BY name")]


async def test_setup_creates_the_file_and_is_idempotent(db: SqliteDatabase, tmp_path: Path) -> None:
    assert (tmp_path / "sub" / "orders.db").exists()
    await db.setup()
    async with db.transaction() as tx:
        tables = {r[0] for r in await tx.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"orders", "outbox", "relay_lease"} <= tables


async def test_a_transaction_commits_on_success(db: SqliteDatabase, tmp_path: Path) -> None:
    async with db.transaction() as tx:
        assert await tx.execute("INSERT INTO relay_lease VALUES ('a', 'h', 1)") == 1
    # Visible to another connection: really committed.
    other = sqlite3.connect(str(tmp_path / "sub" / "orders.db"))
    try:
        assert other.execute("SELECT name FROM relay_lease").fetchall() == [("a",)]
    finally:
        other.close()


async def test_a_transaction_rolls_back_on_error(db: SqliteDatabase) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO relay_lease VALUES ('a', 'h', 1)")
            raise RuntimeError("boom")
    assert await names(db) == []
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO relay_lease VALUES ('b', 'h', 1)")
    assert await names(db) == ["b"]


async def test_execute_returns_the_changed_row_count(db: SqliteDatabase) -> None:
    async with db.transaction() as tx:
        for n in "abc":
            await tx.execute("INSERT INTO relay_lease VALUES (?, 'h', 1)", (n,))
        assert await tx.execute("UPDATE relay_lease SET holder = 'x' WHERE name != 'a'") == 2
        assert await tx.fetchone("SELECT holder FROM relay_lease WHERE name = 'zz'") is None


def test_open_database_dispatches_on_the_url(tmp_path: Path) -> None:
    sq = open_database(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(sq, SqliteDatabase) and sq.path == f"{tmp_path}/x.db"
    pg = open_database("postgres://u@h/db")
    assert isinstance(pg, PostgresDatabase) and pg.url == "postgresql://u@h/db"
    with pytest.raises(ValueError, match="mysql"):
        open_database("mysql://x")


async def test_a_transaction_cancelled_while_waiting_for_the_write_lock_leaves_the_db_usable(
    db: SqliteDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the abandoned BEGIN IMMEDIATE used to finish in its thread and leave the
    connection in an open write transaction (later transactions failed, other processes locked)."""
    threads: list[asyncio.Future[Any]] = []  # every statement the database ran in a thread
    real_to_thread = asyncio.to_thread

    def recorded(fn: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        threads.append(asyncio.ensure_future(real_to_thread(fn, *args, **kwargs)))
        return threads[-1]

    monkeypatch.setattr(asyncio, "to_thread", recorded)
    statements: list[str] = []
    assert db._conn is not None
    db._conn.set_trace_callback(statements.append)  # called as a statement starts
    other = sqlite3.connect(str(tmp_path / "sub" / "orders.db"), isolation_level=None, timeout=0.1)
    try:
        other.execute("BEGIN IMMEDIATE")  # e.g. a relay process writing

        async def write() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO relay_lease VALUES ('a', 'h', 1)")

        task = asyncio.create_task(write())
        await wait_until(lambda: "BEGIN IMMEDIATE" in statements)  # blocked in it (busy timeout 30 s)
        task.cancel()  # e.g. shutdown cancels the relay task
        # One turn of the loop delivers the cancellation: cancel() scheduled the task's
        # wake-up ahead of this coroutine's, and asyncio runs ready callbacks in order.
        # So the task has seen it while BEGIN still waits for the lock `other` holds.
        await asyncio.sleep(0)
        other.execute("COMMIT")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        # Every statement started in a thread has ended (an abandoned BEGIN took the lock).
        await asyncio.wait_for(asyncio.gather(*threads, return_exceptions=True), 10)
        assert not db._conn.in_transaction

        async with db.transaction() as tx:
            await tx.execute("INSERT INTO relay_lease VALUES ('b', 'h', 1)")
        assert await names(db) == ["b"]
        other.execute("BEGIN IMMEDIATE")  # another process can still write
        other.execute("COMMIT")
    finally:
        other.close()


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("synchronous, pragma", [("FULL", 2), ("NORMAL", 1)])
async def test_the_sqlite_synchronous_choice_is_applied_in_wal_mode(tmp_path: Path, synchronous: str, pragma: int) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'o.db'}", sqlite_synchronous=synchronous)
    await db.setup()
    try:
        async with db.transaction() as tx:
            assert await tx.fetchone("PRAGMA synchronous") == (pragma,)
            assert await tx.fetchone("PRAGMA journal_mode") == ("wal",)
    finally:
        await db.close()
    with pytest.raises(ValueError):
        SqliteDatabase(str(tmp_path / "x.db"), synchronous="OFF")
