"""orders.db.SqliteDatabase: commit on success, roll back on error, group commit, URL dispatch."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from orders.db import GroupAborted, PostgresDatabase, SqliteDatabase, open_database


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


# -- group commit (SqliteDatabase's rules 1-7) ------------------------------------------------

Body = Callable[[Any], Awaitable[None]]


def trace(db: SqliteDatabase) -> list[tuple[str, int]]:
    """Every statement the connection starts, with the thread that runs it."""
    seen: list[tuple[str, int]] = []
    assert db._conn is not None
    db._conn.set_trace_callback(lambda sql: seen.append((sql, threading.get_ident())))
    return seen


def committed(path: Path) -> set[str]:
    """The names another connection sees in table t (what is committed)."""
    other = sqlite3.connect(str(path))
    try:
        return {r[0] for r in other.execute("SELECT name FROM t")}
    finally:
        other.close()


@pytest.fixture
async def gdb(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    d = SqliteDatabase(str(tmp_path / "g.db"))
    await d.setup()
    async with d.transaction() as tx:
        await tx.execute("CREATE TABLE t (name TEXT PRIMARY KEY)")
    yield d
    await d.close()


async def member(db: SqliteDatabase, body: Body, exits: list[tuple[int, set[str]]], n: int) -> None:
    async with db.transaction() as tx:
        await body(tx)
    exits.append((n, committed(Path(db.path))))  # what is committed when the answer would go out


def insert(name: str) -> Body:
    async def body(tx: Any) -> None:
        await tx.execute("INSERT INTO t VALUES (?)", (name,))
    return body


async def queue_as_one_group(db: SqliteDatabase, bodies: list[Body], exits: list[tuple[int, set[str]]],
                             statements: list[tuple[str, int]]) -> list[asyncio.Task[None]]:
    """Start one member per body so that all of them form one group: another connection holds
    the write lock, so the first member waits in BEGIN IMMEDIATE while the others queue for
    their turn (rule 2: the group's committer is queued behind them). Then let BEGIN through."""
    other = sqlite3.connect(db.path, isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")
    try:
        tasks = [asyncio.create_task(member(db, b, exits, n)) for n, b in enumerate(bodies)]
        # asyncio.Lock's queue of waiters (private, read only here): every other member queued
        await wait_until(lambda: any(s == "BEGIN IMMEDIATE" for s, _ in statements)
                         and len(db._turn._waiters or ()) == len(bodies) - 1)  # type: ignore[attr-defined]
    finally:
        other.execute("COMMIT")
        other.close()
    return tasks


def kinds(statements: list[tuple[str, int]]) -> list[str]:
    """The transaction's own statements (not the savepoints' ROLLBACK TO)."""
    return [s.split()[0] for s, _ in statements if s in ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")]


async def test_concurrent_bodies_share_one_commit_a_failing_one_fails_alone_and_answers_wait_for_it(
    gdb: SqliteDatabase, tmp_path: Path
) -> None:
    """Rules 2, 3, 5: five bodies, one BEGIN and one COMMIT; the third raises after its insert and
    only its insert is undone; the fourth sees what the first two wrote and not the third's; no
    member's `async with` exits before its row is visible to another connection."""
    statements = trace(gdb)
    seen_by_d: list[set[str]] = []

    async def failing(tx: Any) -> None:
        await tx.execute("INSERT INTO t VALUES ('c')")
        raise RuntimeError("c refused")

    async def d(tx: Any) -> None:
        seen_by_d.append({r[0] for r in await tx.fetchall("SELECT name FROM t")})
        await tx.execute("INSERT INTO t VALUES ('d')")

    exits: list[tuple[int, set[str]]] = []
    tasks = await queue_as_one_group(gdb, [insert("a"), insert("b"), failing, d, insert("e")], exits, statements)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert [type(r).__name__ for r in results] == ["NoneType", "NoneType", "RuntimeError", "NoneType", "NoneType"]
    assert kinds(statements) == ["BEGIN", "COMMIT"]
    assert seen_by_d == [{"a", "b"}]
    assert committed(tmp_path / "g.db") == {"a", "b", "d", "e"}
    assert sorted(n for n, _ in exits) == [0, 1, 3, 4]
    assert all({"a", "b", "d", "e"} <= rows for _, rows in exits), exits  # answered after the COMMIT
    assert (gdb.groups_committed, gdb.members_committed) == (2, 5)  # the CREATE TABLE's group, then this one


async def test_a_member_cancelled_in_its_body_or_while_queued_leaves_the_others_to_commit(
    gdb: SqliteDatabase, tmp_path: Path
) -> None:
    """Rules 3, 6: a body cancelled at an await is rolled back to its savepoint on the spot; a
    member cancelled while waiting for its turn wrote nothing; the group still commits the rest,
    and the connection is not left in a statement or a transaction."""
    statements = trace(gdb)
    entered, never = asyncio.Event(), asyncio.Event()

    async def stuck(tx: Any) -> None:
        await tx.execute("INSERT INTO t VALUES ('b')")
        entered.set()
        await never.wait()  # e.g. a client gone: aiohttp cancels the handler here

    exits: list[tuple[int, set[str]]] = []
    tasks = await queue_as_one_group(gdb, [insert("a"), stuck, insert("c"), insert("d")], exits, statements)
    await asyncio.wait_for(entered.wait(), 10)
    tasks[3].cancel()  # queued behind the stuck body
    tasks[1].cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert [type(r).__name__ for r in results] == ["NoneType", "CancelledError", "NoneType", "CancelledError"]
    assert committed(tmp_path / "g.db") == {"a", "c"}
    assert kinds(statements) == ["BEGIN", "COMMIT"]
    assert gdb._conn is not None and not gdb._conn.in_transaction
    async with gdb.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES ('e')")
    assert committed(tmp_path / "g.db") == {"a", "c", "e"}


async def test_a_member_cancelled_while_its_group_commits_exits_only_when_the_commit_has_ended(
    gdb: SqliteDatabase, tmp_path: Path
) -> None:
    """Rule 6: whenever a member's `async with` exits, its effects are decided. The first member's
    body is done and it waits for the COMMIT, which waits for the second member's body; cancelled
    then, it must not exit before that COMMIT — and its row is committed when it does."""
    statements = trace(gdb)
    entered, go = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def slow(tx: Any) -> None:
        entered.set()
        await go.wait()
        await tx.execute("INSERT INTO t VALUES ('b')")
        order.append("second body ended")

    exits: list[tuple[int, set[str]]] = []
    tasks = await queue_as_one_group(gdb, [insert("a"), slow], exits, statements)
    await asyncio.wait_for(entered.wait(), 10)
    tasks[0].cancel()

    async def first_exit() -> None:
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        order.append(f"first member exited, committed: {sorted(committed(tmp_path / 'g.db'))}")

    watcher = asyncio.create_task(first_exit())
    go.set()
    await asyncio.wait_for(asyncio.gather(watcher, tasks[1]), 10)
    assert order == ["second body ended", "first member exited, committed: ['a', 'b']"]


async def test_a_failed_commit_fails_every_member_and_keeps_nothing(gdb: SqliteDatabase, tmp_path: Path) -> None:
    """Rule 4: a COMMIT that fails (here a deferred foreign key, checked only at COMMIT) raises
    in every member whose body succeeded; nothing is kept; the next transaction works."""
    async with gdb.transaction() as tx:
        await tx.execute("CREATE TABLE parent (id TEXT PRIMARY KEY)")
        await tx.execute("CREATE TABLE child (pid TEXT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    assert gdb._conn is not None
    gdb._conn.execute("PRAGMA foreign_keys = ON")
    statements = trace(gdb)

    async def orphan(tx: Any) -> None:
        await tx.execute("INSERT INTO child VALUES ('nobody')")

    exits: list[tuple[int, set[str]]] = []
    tasks = await queue_as_one_group(gdb, [insert("a"), orphan, insert("c")], exits, statements)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert all(isinstance(r, GroupAborted) for r in results), results
    assert all("FOREIGN KEY" in str(r.__cause__) for r in results)
    assert exits == []
    assert committed(tmp_path / "g.db") == set()
    assert kinds(statements) == ["BEGIN", "COMMIT", "ROLLBACK"]
    async with gdb.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES ('d')")
    assert committed(tmp_path / "g.db") == {"d"}


async def test_an_error_that_ends_the_whole_transaction_fails_the_group_not_just_its_member(
    gdb: SqliteDatabase, tmp_path: Path
) -> None:
    """Rule 4: after SQLITE_FULL SQLite rolls back the whole transaction, so the members before
    the failing one lost their rows too: they must fail (not be answered as committed); the
    members after it start a new group and commit."""
    assert gdb._conn is not None
    pages = gdb._conn.execute("PRAGMA page_count").fetchone()[0]
    gdb._conn.execute(f"PRAGMA max_page_count = {pages + 5}")  # the disk is (nearly) full
    statements = trace(gdb)

    async def too_big(tx: Any) -> None:
        await tx.execute("INSERT INTO t VALUES (?)", ("x" * 200_000,))

    exits: list[tuple[int, set[str]]] = []
    tasks = await queue_as_one_group(gdb, [insert("a"), too_big, insert("c")], exits, statements)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert isinstance(results[0], GroupAborted), results
    assert isinstance(results[1], sqlite3.OperationalError) and "full" in str(results[1])
    assert results[2] is None
    assert committed(tmp_path / "g.db") == {"c"}
    assert kinds(statements) == ["BEGIN", "BEGIN", "COMMIT"]


async def test_only_begin_and_commit_leave_the_event_loop(gdb: SqliteDatabase) -> None:
    """Rule 7: the body's statements run on the loop's thread; BEGIN IMMEDIATE and COMMIT
    (the ones that can wait for another process or the disk) in a worker thread."""
    statements = trace(gdb)
    async with gdb.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES ('a')")
        assert await tx.fetchone("SELECT name FROM t") == ("a",)
    here = threading.get_ident()
    where = {s.split()[0]: ident == here for s, ident in statements}
    assert where == {"BEGIN": False, "SAVEPOINT": True, "INSERT": True, "SELECT": True, "RELEASE": True,
                     "COMMIT": False}


async def test_a_long_statement_leaves_the_loop_free_and_a_cancel_waits_for_its_end(
    gdb: SqliteDatabase, tmp_path: Path
) -> None:
    """Rule 7's exception (``execute_long``, the relay's batch marks): the statement runs in a
    thread while the loop goes on; a body cancelled meanwhile is rolled back only once the
    statement has ended — never under it — and the connection stays usable."""
    entered, release = threading.Event(), threading.Event()

    def gate() -> int:  # a statement that runs until the test lets it end
        entered.set()
        release.wait(3)  # (a bound, should the test fail before it lets go)
        return 1

    assert gdb._conn is not None
    gdb._conn.create_function("gate", 0, gate)
    ended: list[str] = []

    async def body() -> None:
        async with gdb.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('a')")
            await tx.execute_long("UPDATE t SET name = 'b' WHERE gate() = 1")
            ended.append("body")

    task = asyncio.create_task(body())
    await wait_until(entered.is_set)  # the loop runs this test while the statement holds
    task.cancel()
    for _ in range(5):  # no time passes; the cancellation may not finish under the statement
        await asyncio.sleep(0)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert ended == []
    assert committed(tmp_path / "g.db") == set()
    assert not gdb._conn.in_transaction
    async with gdb.transaction() as tx:
        assert await tx.execute_long("INSERT INTO t VALUES ('c')") == 1
        assert await tx.fetchall_long("SELECT name FROM t") == [("c",)]
    assert committed(tmp_path / "g.db") == {"c"}


async def test_a_handle_used_after_its_body_is_refused(gdb: SqliteDatabase) -> None:
    """Rule 1: a handle kept past its body would run inside another member's savepoint."""
    async with gdb.transaction() as tx:
        pass
    with pytest.raises(RuntimeError, match="after its"):
        await tx.execute("INSERT INTO t VALUES ('late')")


async def test_close_waits_for_the_open_groups_commit(gdb: SqliteDatabase, tmp_path: Path) -> None:
    """Rule 2 at shutdown: close() asked for while a group waits in BEGIN queues on the turn
    ahead of that group's committer; it must let the group commit first, not close the
    connection under it (its members would wait for an answer forever)."""
    statements = trace(gdb)
    other = sqlite3.connect(gdb.path, isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")
    exits: list[tuple[int, set[str]]] = []
    try:
        tasks = [asyncio.create_task(member(gdb, insert(n), exits, i)) for i, n in enumerate("ab")]
        await wait_until(lambda: any(s == "BEGIN IMMEDIATE" for s, _ in statements)
                         and len(gdb._turn._waiters or ()) == 1)  # type: ignore[attr-defined]
        closing = asyncio.create_task(gdb.close())
        await wait_until(lambda: len(gdb._turn._waiters or ()) == 2)  # type: ignore[attr-defined]
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(asyncio.gather(*tasks, closing), 10)
    assert committed(tmp_path / "g.db") == {"a", "b"}
    assert gdb._conn is None
