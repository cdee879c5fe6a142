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
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, next_retry_at, position);
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


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await _in_thread(lambda: self.conn.execute(sql, tuple(params)).rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await _in_thread(lambda: self.conn.execute(sql, tuple(params)).fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return await _in_thread(lambda: self.conn.execute(sql, tuple(params)).fetchone())


#: ``PRAGMA synchronous`` values the order service allows (``SQLITE_SYNCHRONOUS``).
#: FULL (default): every commit — the order and outbox rows behind a 201 — is fsynced
#: to the WAL before the answer, so it survives a power loss or an OS crash. NORMAL:
#: in WAL mode a commit is durable against a crash of the process (the WAL is in the
#: OS's cache) but the last commits may roll back after a power loss or OS crash; it
#: fsyncs only at checkpoints. The database stays consistent either way.
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


class SqliteDatabase:
    """One connection, one transaction at a time (``BEGIN IMMEDIATE``), WAL journal,
    ``synchronous`` as chosen (:data:`SQLITE_SYNCHRONOUS`)."""

    dialect = "sqlite"

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        if synchronous not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SQLITE_SYNCHRONOUS}")
        self.path = path
        self.synchronous = synchronous
        self._lock = asyncio.Lock()
        self._conn: sqlite3.Connection | None = None

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
        conn = await asyncio.to_thread(self._connect)
        ddl = SCHEMA.format(**DIALECT_TYPES["sqlite"]).replace("DOUBLE PRECISION", "REAL")
        await asyncio.to_thread(conn.executescript, ddl)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        async with self._lock:
            conn = await _in_thread(self._connect)
            try:
                await _in_thread(lambda: conn.execute("BEGIN IMMEDIATE"))
            except asyncio.CancelledError:
                if conn.in_transaction:  # BEGIN finished after the cancel
                    await asyncio.shield(asyncio.to_thread(conn.execute, "ROLLBACK"))
                raise
            try:
                yield _SqliteTx(conn)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(conn.execute, "ROLLBACK"))
                raise
            await _in_thread(lambda: conn.execute("COMMIT"))

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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
