"""orders.db.SqliteDatabase: commit on success, roll back on error, URL dispatch."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

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
    db: SqliteDatabase, tmp_path: Path
) -> None:
    """Regression: the abandoned BEGIN IMMEDIATE used to finish in its thread and leave the
    connection in an open write transaction (later transactions failed, other processes locked)."""
    other = sqlite3.connect(str(tmp_path / "sub" / "orders.db"), isolation_level=None, timeout=0.1)
    try:
        other.execute("BEGIN IMMEDIATE")  # e.g. a relay process writing

        async def write() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO relay_lease VALUES ('a', 'h', 1)")

        task = asyncio.create_task(write())
        await asyncio.sleep(0.1)  # blocked in BEGIN IMMEDIATE (busy timeout)
        task.cancel()  # e.g. shutdown cancels the relay task
        await asyncio.sleep(0.05)
        other.execute("COMMIT")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        await asyncio.sleep(0.3)  # an abandoned BEGIN would get the lock meanwhile

        async with db.transaction() as tx:
            await tx.execute("INSERT INTO relay_lease VALUES ('b', 'h', 1)")
        assert await names(db) == ["b"]
        other.execute("BEGIN IMMEDIATE")  # another process can still write
        other.execute("COMMIT")
    finally:
        other.close()
