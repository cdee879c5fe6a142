from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from tests.support.worker import WorkerProcess


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A fresh embedded broker per test (its memory only grows), on a free port."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def worker_factory(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Make workers on this test's broker; every worker is stopped at the end."""
    made: list[WorkerProcess] = []

    def make(name: str = "w1", *, app: str = "streams", **env: str) -> WorkerProcess:
        w = WorkerProcess(broker.url, tmp_path / f"data-{name}", tmp_path / f"{name}.log", app=app, **env)
        made.append(w)
        return w

    yield make
    for w in made:
        w.kill()


@pytest.fixture
def orders_factory(tmp_path: Path):
    """Make order-service processes (serve / relay); all are killed at the end."""
    from tests.support.orders import OrdersProcess

    made: list[OrdersProcess] = []

    def make(command: str = "serve", name: str | None = None, **env: str) -> OrdersProcess:
        p = OrdersProcess(command, tmp_path / f"{name or command}.log", **env)
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill()


@pytest.fixture
def postgres():
    """A private PostgreSQL server on a free port (stopped and removed afterwards)."""
    from tests.support.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()
