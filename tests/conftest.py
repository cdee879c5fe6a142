from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.worker import WorkerProcess
from streams.broker import EmbeddedBroker, KafkaBroker, KafkaSetupError, PortInUseError


# -- ``@pytest.mark.needs("promtool", …)``: a test that runs an external program says so ------------
#
# Rule: a test that needs a program beyond Python and the project's Python packages (a JVM for
# Apache Kafka, promtool, node, Chromium, PostgreSQL's binaries …) carries ``needs(…)`` naming
# each one, directly or through a fixture listed in FIXTURE_NEEDS, and is never under
# tests/unit (``-m "not needs"`` then selects what runs anywhere; tests/unit runs anywhere).
# A needed program that is missing fails the test in one line naming it and how to install
# it: never a skip (a missing program is a broken setup, and ``make test`` installs them).

#: fixture → the programs every test using it needs
FIXTURE_NEEDS: dict[str, tuple[str, ...]] = {
    "kafka_session": ("java",),
    "postgres": ("postgres",),
    "secure": ("java", "openssl"),  # tests/integration/test_kafka_security.py's SASL_SSL Kafka
}


def _java() -> str | None:
    from streams.broker.kafka import java_command

    return java_command()


def _postgres() -> str | None:
    from harness.postgres import pg_bin

    try:
        return str(pg_bin())
    except RuntimeError:
        return None


def _libfaketime() -> str | None:  # a preloaded library rather than a program (Debian's faketime)
    import glob

    return next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)


#: programs not looked up on PATH alone
FINDERS: dict[str, Callable[[], str | None]] = {"java": _java, "postgres": _postgres, "libfaketime": _libfaketime}
INSTALL_HINT = "scripts/ensure-system-packages installs it (make test runs it)"


def needed_programs(item: pytest.Item) -> list[str]:
    names = [name for mark in item.iter_markers("needs") for name in mark.args]
    for fixture in getattr(item, "fixturenames", ()):
        names.extend(FIXTURE_NEEDS.get(fixture, ()))
    return list(dict.fromkeys(names))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unit = Path(__file__).resolve().parent / "unit"
    misplaced = [f"{item.nodeid} needs {', '.join(needed_programs(item))}" for item in items
                 if needed_programs(item) and unit in Path(str(item.path)).resolve().parents]
    if misplaced:
        raise pytest.UsageError("tests/unit is for tests that need no external program; move these "
                                "(tests/integration or another folder): " + "; ".join(misplaced))
    for item in items:  # a fixture's programs become the test's own mark, so -m "needs" sees them
        if needed_programs(item) and not item.get_closest_marker("needs"):
            item.add_marker(pytest.mark.needs(*needed_programs(item)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name in needed_programs(item):
        if (FINDERS.get(name) or (lambda: shutil.which(name)))() is None:
            pytest.fail(f"{item.nodeid} needs {name}, which is not installed: {INSTALL_HINT}", pytrace=False)


#: The broker the ``broker`` fixture (and so ``worker_factory``, ``module_broker``) is:
#: Apache Kafka by default — the session's one node, emptied per test (``kafka``), the
#: broker our users run; ``TEST_BROKER=tansu``: a fresh embedded Tansu per test instead.
#: Tansu's own job is the tests that ask for the ``tansu`` fixture by name, whatever this says.
TEST_BROKER = os.environ.get("TEST_BROKER", "kafka")
if TEST_BROKER not in ("kafka", "tansu"):
    raise pytest.UsageError(f"TEST_BROKER={TEST_BROKER!r}: 'kafka' (the default) or 'tansu'")
if TEST_BROKER == "kafka":  # a test on ``broker`` needs Java as one on ``kafka`` does
    FIXTURE_NEEDS["broker"] = FIXTURE_NEEDS["module_broker"] = FIXTURE_NEEDS["kafka_session"]


def _run(coro: object) -> None:
    """Run a coroutine to completion from sync code that may be inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker | KafkaBroker]:
    """The test's broker: the session's Apache Kafka, emptied for this test (``kafka``);
    with TEST_BROKER=tansu a fresh embedded Tansu (``tansu``)."""
    yield request.getfixturevalue("kafka" if TEST_BROKER == "kafka" else "tansu")


@pytest.fixture(scope="module")
def module_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker | KafkaBroker]:
    """One broker for the tests of a module that share a worker or a consumer (saves a start
    each): the session's Apache Kafka, emptied once here; with TEST_BROKER=tansu a fresh Tansu.

    Rule: on Kafka, while a module holds it no test may use ``kafka``/``broker`` (that would
    empty the broker under the shared worker): such tests come first in the module (pytest
    ends a module fixture after its module's last test). ``kafka`` enforces it."""
    if TEST_BROKER != "kafka":
        with EmbeddedBroker() as b:
            yield b
        return
    from harness.kafka import reset_broker

    session: KafkaBroker = request.getfixturevalue("kafka_session")
    if not session.processes:
        session.start(die_with_parent=True)
    _run(reset_broker(session.bootstrap))
    _shared_by.append(request.node.nodeid)
    try:
        yield session
    finally:
        _shared_by.remove(request.node.nodeid)


#: modules holding the session's Kafka through ``module_broker`` right now
_shared_by: list[str] = []


@pytest.fixture
def tansu() -> Iterator[EmbeddedBroker]:
    """A fresh embedded Tansu broker for this test (its memory only grows), on a free port:
    the Tansu job — the tests that show the fallback broker still works ask for it by name."""
    with EmbeddedBroker() as b:
        yield b


def _workers(broker: EmbeddedBroker | KafkaBroker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    made: list[WorkerProcess] = []

    def make(name: str = "w1", *, app: str = "streams", **env: str) -> WorkerProcess:
        w = WorkerProcess(broker.url, tmp_path / f"data-{name}", tmp_path / f"{name}.log", app=app, **env)
        made.append(w)
        return w

    yield make
    for w in made:  # SIGKILL: on Kafka the next test's reset sends its member off (harness.kafka)
        if isinstance(broker, KafkaBroker) and w.env.get("PROCESSING_GUARANTEE") == "exactly_once":
            w.stop(timeout=20)  # no transaction left open for the next test's worker to fence
        w.kill()


@pytest.fixture
def worker_factory(broker: EmbeddedBroker | KafkaBroker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Make workers on this test's broker; every worker is SIGKILLed at the end — on Kafka
    too (a graceful stop cost ~3 s a test): the next test's ``kafka`` reset sends the member
    it left off and deletes the group. An exactly_once worker is stopped with SIGTERM first,
    so no transaction stays open into the next test."""
    yield from _workers(broker, tmp_path)


@pytest.fixture
def tansu_worker_factory(tansu: EmbeddedBroker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Make workers on this test's Tansu broker (``tansu``); all are killed at the end."""
    yield from _workers(tansu, tmp_path)


#: The session's Kafka accepts a record timestamp however far ahead, as Kafka 3.x did by
#: default: Kafka 4 refuses CreateTime more than an hour ahead (InvalidTimestampError), and
#: the hostile-input, fuzz and clock-step tests must get such records (a forged year 9999, a
#: worker whose clock is 400 days ahead) to the worker to show what it does with them.
TEST_KAFKA_SETTINGS: dict[str, object] = {"log.message.timestamp.after.max.ms": 2**63 - 1}


@pytest.fixture(scope="session")
def kafka_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One Apache Kafka node for the whole test session (a JVM start costs ~8 s).

    Where Kafka cannot start (no Java 17+, no jars and no Maven) the test fails with
    the runner's one line: it is never skipped silently."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), overrides=TEST_KAFKA_SETTINGS)
    try:
        broker.start(die_with_parent=True)  # pytest runs fixtures on its main thread
    except (KafkaSetupError, PortInUseError) as exc:
        pytest.fail(f"Apache Kafka could not start: {exc}", pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture
def kafka(kafka_session: KafkaBroker) -> Iterator[KafkaBroker]:
    """The session's Apache Kafka, emptied for this test: no topic (but Kafka's internal
    ones), no consumer group. Tests that stop it must start it again (same ports)."""
    from harness.kafka import reset_broker

    if _shared_by:
        pytest.fail(f"{_shared_by[0]} holds the session's Kafka (module_broker): a test on kafka/broker "
                    "would empty it under the module's shared worker; put such tests before the "
                    "module's module_broker tests", pytrace=False)
    if not kafka_session.processes:
        kafka_session.start(die_with_parent=True)
    _run(reset_broker(kafka_session.bootstrap))
    yield kafka_session
    if not kafka_session.processes:  # a test stopped it and failed before starting it again
        kafka_session.start(die_with_parent=True)


@pytest.fixture
def kafka_worker_factory(kafka: KafkaBroker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Make workers on the session's Kafka. At the end each is stopped with SIGTERM, so
    it leaves the consumer group (a SIGKILLed member would hold the next test's group
    for a session timeout); the next test's ``kafka`` then deletes topics and groups."""
    made: list[WorkerProcess] = []

    def make(name: str = "w1", *, app: str = "streams", **env: str) -> WorkerProcess:
        w = WorkerProcess(kafka.url, tmp_path / f"data-{name}", tmp_path / f"{name}.log", app=app, **env)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop(timeout=20)


@pytest.fixture
def orders_factory(tmp_path: Path):
    """Make order-service processes (serve / relay); all are killed at the end."""
    from harness.orders import OrdersProcess

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
    from harness.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()
