"""The Idempotency-Key tests of tests/unit/test_orders_idempotency.py on PostgreSQL: the
same test functions, collected here with a ``new_db`` on a private PostgreSQL server (its
binaries make them more than unit tests: tests/conftest.py, ``needs``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orders.db import PostgresDatabase
from harness.postgres import PostgresServer
from tests.unit.test_orders_idempotency import *  # noqa: F401,F403  (the tests and their fixtures)

pytestmark = pytest.mark.needs("postgres")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Any]:
    """One PostgreSQL server for this module (each test empties the tables)."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def new_db(pg_server: Any) -> Any:  # noqa: F811  (in place of the unit module's SQLite one)
    """Make Database objects on one database (several = several processes)."""
    return lambda: PostgresDatabase(pg_server.url, max_size=4)
