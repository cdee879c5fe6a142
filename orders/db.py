"""Database access for SQLite (default) and PostgreSQL, behind one small interface.

SQL is written once with ``?`` placeholders; the PostgreSQL adapter rewrites them
to ``%s``. Times are epoch seconds (floats) in both. The schema differs only in the
auto-increment column and the binary type.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id     TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    items        TEXT NOT NULL,
    amount       TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    position      {serial},
    id            TEXT NOT NULL UNIQUE,
    aggregate_id  TEXT NOT NULL,
    topic         TEXT NOT NULL,
    key           {binary},
    payload       {binary},
    headers       TEXT NOT NULL DEFAULT '[]',
    status        TEXT NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_retry_at DOUBLE PRECISION NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    sent_at       DOUBLE PRECISION,
    last_error    TEXT
);
-- The relay's claim reads pending rows in position order through outbox_claim, so a claim
-- costs its batch, not the backlog: outbox_pending (status, next_retry_at, position) made
-- SQLite sort every due pending row on each claim (20 ms for 500 of 20,000). Dropped for
-- databases made before, or SQLite's planner would keep choosing it.
DROP INDEX IF EXISTS outbox_pending;
CREATE INDEX IF NOT EXISTS outbox_claim ON outbox (status, position, next_retry_at);
CREATE INDEX IF NOT EXISTS outbox_aggregate ON outbox (aggregate_id, status, position);
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (status, sent_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idem_key     TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    status       INTEGER NOT NULL,
    body         TEXT NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);
-- relay_lease: the SQLite relays' lease until the relay lock file replaced it
-- (orders.relay.RelayLock): no longer read or written, kept for existing databases.
CREATE TABLE IF NOT EXISTS relay_lease (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
"""

DIALECT_TYPES = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "binary": "BLOB"},
    "postgresql": {"serial": "BIGSERIAL PRIMARY KEY", "binary": "BYTEA"},
}


class Tx(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    async def execute_long(self, sql: str, params: Sequence[Any] = ()) -> int:
        """:meth:`execute` for a statement over hundreds of rows (the relay's batch mark):
        SQLite runs it in a thread, so the event loop is free meanwhile."""

    async def fetchall_long(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """:meth:`fetchall` for a read of hundreds of rows (the relay's claim), as above."""


class Database(Protocol):
    dialect: str

    def transaction(self) -> Any:
        """``async with db.transaction() as tx``: commit on success, roll back on error."""

    async def setup(self) -> None: ...

    async def close(self) -> None: ...


# -- SQLite ----------------------------------------------------------------------------


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread; if the caller is cancelled, still wait for ``fn`` to end.

    A statement keeps running in its thread after the awaiting task is cancelled; the
    connection must not be used (ROLLBACK, next transaction) until it has finished.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


async def _until_done(future: asyncio.Future[Any]) -> bool:
    """Wait until ``future`` is done, through any number of cancellations; return whether
    the caller was cancelled meanwhile (it must then raise ``CancelledError`` itself)."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


class GroupAborted(sqlite3.OperationalError):
    """The shared transaction this body ran in did not commit, though the body itself
    succeeded: the group's COMMIT failed, or another member's failure ended the whole
    transaction (see :class:`SqliteDatabase`). Nothing the body wrote was kept."""


class _SqliteTx:
    """A member's handle: statements run on the event loop (the group holds the write lock,
    so none of them waits for another process), and only inside the member's own body."""

    __slots__ = ("conn", "open")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.open = True

    def _cursor(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        if not self.open:
            raise RuntimeError("a transaction handle was used after its `async with` body ended")
        return self.conn.execute(sql, tuple(params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cursor(sql, params).rowcount

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._cursor(sql, params).fetchall()

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self._cursor(sql, params).fetchone()

    async def execute_long(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Rule 7's one exception: a statement over hundreds of rows runs in a thread
        (SQLite lets go of the GIL while it works), still within the body's turn, and is
        awaited to its end even if the body is cancelled (:func:`_in_thread`), so the
        connection is never rolled back under a running statement."""
        return await _in_thread(lambda: self._cursor(sql, params).rowcount)

    async def fetchall_long(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """:meth:`execute_long` for a read."""
        return await _in_thread(lambda: self._cursor(sql, params).fetchall())


class _Group:
    """One shared write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``) and its members."""

    __slots__ = ("broken", "done", "members")

    def __init__(self) -> None:
        #: resolved by the group's committer once its fate is decided (exception: it did not commit)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: why the group can no longer commit (set under the turn; the transaction is rolled back)
        self.broken: BaseException | None = None
        #: bodies that ended successfully in this group
        self.members = 0


#: ``PRAGMA synchronous`` values the order service allows (``SQLITE_SYNCHRONOUS``).
#: FULL (default): every commit — the order and outbox rows behind a 201 — is fsynced
#: to the WAL before the answer, so it survives a power loss or an OS crash. NORMAL:
#: in WAL mode a commit is durable against a crash of the process (the WAL is in the
#: OS's cache) but the last commits may roll back after a power loss or OS crash; it
#: fsyncs only at checkpoints. The database stays consistent either way.
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


class SqliteDatabase:
    """One connection, WAL journal, ``synchronous`` as chosen (:data:`SQLITE_SYNCHRONOUS`),
    and **group commit**: concurrent ``transaction()`` bodies share one write transaction
    and so one COMMIT (one fsync). The rules, enforced in :meth:`transaction`:

    1. *One body at a time.* A body runs only while it holds the turn (a FIFO lock), from
       its ``SAVEPOINT`` to its ``RELEASE``/``ROLLBACK TO``; bodies never interleave, so
       savepoints never nest across members.
    2. *A group is one transaction.* The first member to take the turn while no group is
       open runs ``BEGIN IMMEDIATE`` and opens the group; each later member takes the turn
       and joins the open group. At BEGIN the group's committer is queued on the turn,
       behind every member waiting at that moment: when its turn comes it closes the group
       (later arrivals start the next one) and runs COMMIT. The committer is a task of its
       own, so no member's cancellation can leave a group without one, and it resolves
       its group on every path; ``close`` lets an open group commit first.
    3. *A member fails alone.* A body that raises (or is cancelled) is rolled back to its
       own savepoint; the members before and after it are untouched. A body sees the
       writes of the successful members before it in its group — they commit or fail with
       it, never without it.
    4. *A group fails whole.* If SQLite ended the whole transaction (it does after some
       errors, e.g. SQLITE_FULL or SQLITE_IOERR), or a savepoint could not be rolled back
       or released, or a body ended the transaction itself, the group is broken: rolled
       back at once and closed; its successful members raise :class:`GroupAborted`, the
       failing member its own error. If COMMIT fails, the transaction is rolled back and
       every successful member raises :class:`GroupAborted` (chained to the cause).
    5. *No answer before the fsync.* A successful member's ``async with`` exits only after
       its group's COMMIT returned. So an order answered 201 (and the relay woken after
       the exit) is committed — durable as ``synchronous`` says.
    6. *Cancellation decides first.* A member cancelled while waiting for the turn or in
       BEGIN has written nothing (a BEGIN that finished in its thread anyway is rolled
       back); cancelled in its body it is rolled back to its savepoint on the spot (no
       await in between, so the connection is never left mid-statement); cancelled while
       waiting for its group's COMMIT it waits for the COMMIT to end, then raises
       ``CancelledError``. Whenever a member's ``async with`` exits, its effects are
       decided. (A cancelled member's committed effects stay committed.)
    7. *Threads only where SQLite may block.* ``BEGIN IMMEDIATE`` (waits up to the busy
       timeout for another process's write lock) and COMMIT (the fsync, and an
       auto-checkpoint) run in a thread, holding the turn; every statement of a body runs
       on the event loop — the group holds the write lock, so none of them waits — except
       the few of hundreds of rows a body sends to a thread itself (``execute_long``,
       ``fetchall_long``: the relay's batch claims and marks, milliseconds each), still
       holding the turn and awaited to their end even when cancelled.
    """

    dialect = "sqlite"

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        if synchronous not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SQLITE_SYNCHRONOUS}")
        self.path = path
        self.synchronous = synchronous
        self._turn = asyncio.Lock()
        self._conn: sqlite3.Connection | None = None
        self._group: _Group | None = None
        self._committers: set[asyncio.Task[None]] = set()
        #: groups committed, and the successful bodies they held (their ratio: members per fsync)
        self.groups_committed = 0
        self.members_committed = 0

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            self._conn = conn
        return self._conn

    async def setup(self) -> None:
        async with self._turn:
            conn = await _in_thread(self._connect)
            ddl = SCHEMA.format(**DIALECT_TYPES["sqlite"]).replace("DOUBLE PRECISION", "REAL")
            await _in_thread(lambda: conn.executescript(ddl))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        await self._turn.acquire()  # rule 1 (cancelled here: nothing to undo)
        try:
            group = self._group
            if group is not None and group.broken is not None:  # its committer was cancelled
                self._break(group, group.broken)
                group = None
            if group is None:
                group = await self._open_group()
            conn = self._conn
            assert conn is not None
            try:
                conn.execute("SAVEPOINT member")
            except BaseException as exc:
                self._break(group, exc)
                raise
            tx = _SqliteTx(conn)
            try:
                yield tx
            except BaseException as exc:  # rule 3, or rule 4 if SQLite ended the transaction
                tx.open = False
                self._undo(group, exc)
                raise
            tx.open = False
            if not conn.in_transaction:
                self._break(group, RuntimeError("a body ended the shared transaction itself"))
            else:
                try:
                    conn.execute("RELEASE member")
                except BaseException as exc:
                    self._break(group, exc)
            group.members += 1
        finally:
            self._turn.release()
        cancelled = await _until_done(group.done)  # rule 5 / rule 6
        if cancelled:
            raise asyncio.CancelledError
        if (failure := group.done.exception()) is not None:
            raise GroupAborted(f"the shared transaction did not commit: {failure!r}") from failure

    async def _open_group(self) -> _Group:
        """BEGIN IMMEDIATE (in a thread, holding the turn) and queue the group's committer."""
        conn = self._conn if self._conn is not None else await _in_thread(self._connect)
        try:
            await _in_thread(lambda: conn.execute("BEGIN IMMEDIATE"))
        except asyncio.CancelledError:
            if conn.in_transaction:  # BEGIN finished after the cancel
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        group = self._group = _Group()
        committer = asyncio.get_running_loop().create_task(self._commit(group))
        self._committers.add(committer)
        committer.add_done_callback(self._committers.discard)
        return group

    def _undo(self, group: _Group, exc: BaseException) -> None:
        """Roll a failed body back to its savepoint (on the loop: no await, so no cancel
        can stop it half-way); if that is impossible, break the group (rule 4)."""
        conn = self._conn
        assert conn is not None
        if not conn.in_transaction:
            self._break(group, exc)
            return
        try:
            conn.execute("ROLLBACK TO member")
            conn.execute("RELEASE member")
        except sqlite3.Error as undo_error:
            self._break(group, undo_error)

    def _break(self, group: _Group, exc: BaseException) -> None:
        """Rule 4, called holding the turn: roll the whole transaction back and close the
        group now (the next member starts a new one); its committer only reports."""
        if group.broken is None:
            group.broken = exc
        if self._group is group:
            self._group = None
        conn = self._conn
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    async def _commit(self, group: _Group) -> None:
        """The group's committer (rule 2): when its turn comes, close the group and COMMIT.
        Every path resolves ``group.done``: a member waits for it through cancellations."""
        try:
            await self._turn.acquire()
        except BaseException as exc:  # cancelled: the loop is shutting down; nobody will commit
            group.broken = group.broken or RuntimeError(f"the group's committer was stopped: {exc!r}")
            self._report(group, group.broken)
            raise
        cancelled = False
        try:
            if self._group is group:
                self._group = None
            conn = self._conn
            if group.broken is None and conn is None:
                group.broken = RuntimeError("the connection was closed under an open group")
            if group.broken is not None or conn is None:
                self._report(group, group.broken or RuntimeError("no connection"))
                return
            commit = asyncio.ensure_future(asyncio.to_thread(conn.execute, "COMMIT"))
            cancelled = await _until_done(commit)
            if (failure := commit.exception()) is not None:
                if conn.in_transaction:  # e.g. a deferred constraint: COMMIT refused, transaction open
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                self._report(group, failure)
            else:
                self.groups_committed += 1
                self.members_committed += group.members
                group.done.set_result(None)
        except BaseException as exc:
            if not group.done.done():
                self._report(group, exc)
            raise
        finally:
            self._turn.release()
        if cancelled:
            raise asyncio.CancelledError

    @staticmethod
    def _report(group: _Group, failure: BaseException) -> None:
        group.done.set_exception(failure)
        group.done.exception()  # read by its members, if any; never "exception never retrieved"

    async def close(self) -> None:
        """Close the connection once no group is open: a group opened while ``close`` waited
        for the turn (its committer queued behind ``close``) commits first (rule 2)."""
        while True:
            async with self._turn:
                if self._group is not None and self._group.broken is not None:  # its committer is gone
                    self._break(self._group, self._group.broken)
                if self._group is None:
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                    return
                committers = set(self._committers)
            if committers:
                await asyncio.wait(committers)


# -- PostgreSQL ------------------------------------------------------------------------


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self.conn.execute(_pg(sql), tuple(params))
        return int(cur.rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = await self.conn.execute(_pg(sql), tuple(params))
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in await cur.fetchall()]

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    #: the server does the work; the loop is free already
    execute_long = execute
    fetchall_long = fetchall


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, url: str, max_size: int = 10) -> None:
        from psycopg_pool import AsyncConnectionPool

        self.url = url.replace("postgres://", "postgresql://", 1)
        self.pool = AsyncConnectionPool(self.url, min_size=1, max_size=max_size, open=False)

    async def setup(self) -> None:
        await self.pool.open()
        async with self.transaction() as tx:
            # Serialise concurrent schema creation by several processes.
            await tx.execute("SELECT pg_advisory_xact_lock(7241)")
            for statement in SCHEMA.format(**DIALECT_TYPES["postgresql"]).split(";"):
                if statement.strip():
                    await tx.execute(statement)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTx]:
        async with self.pool.connection() as conn:
            async with conn.transaction():
                yield _PgTx(conn)

    async def notify(self, channel: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(f"NOTIFY {channel}")

    async def close(self) -> None:
        await self.pool.close()


def is_unique_violation(exc: BaseException) -> bool:
    """A primary-key or unique constraint refused a row (SQLite or PostgreSQL)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc)
    try:
        from psycopg import errors
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, errors.UniqueViolation)


def open_database(url: str, *, sqlite_synchronous: str = "FULL") -> Database:
    if url.startswith("sqlite:///"):
        return SqliteDatabase(url[len("sqlite:///"):], synchronous=sqlite_synchronous)
    if url.startswith(("postgres://", "postgresql://")):
        return PostgresDatabase(url)
    raise ValueError(f"unsupported DATABASE_URL {url!r}")
