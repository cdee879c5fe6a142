"""The consumer-port contract (tests/unit/test_consumer_contract.py) against the adapter the
worker runs: :class:`streams.faust.consumer.EngineConsumer`, in a Faust app started in
this process on a real broker (the session's Apache Kafka; Tansu with ``TEST_BROKER=tansu``).

The engine behind the consumer is a recorder in place of the driver: it keeps what each
fetch delivered and notes the seek after assignment, so the tests see the port exactly
as :class:`~streams.engine.position.Driver` does. One app for the module (a group join
costs seconds); each test has partitions of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
import pytest
import pytest_asyncio

from harness.kafka import committed, create_topic, end_offsets, produce
from streams.broker import EmbeddedBroker, KafkaBroker
from streams.engine.records import TP, Record
from streams.faust.consumer import engine_consumer_class
from tests.unit.test_consumer_contract import PARTITIONS, TOPIC, ConsumerPortContract

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="module")]

GROUP = "consumer-contract"


class Recorder:
    """The driver's side of the port: every fetch's offsets per partition, kept."""

    transactions = None

    def __init__(self) -> None:
        self.topics = {TOPIC}
        self.fetched: dict[TP, list[int]] = {}
        self.sought_at: list[Mapping[TP, int]] = []

    async def tick(self, port: Any) -> None:
        return None

    def seconds_until_due(self) -> float | None:
        return None

    async def on_fetch(self, port: Any, fetch: Mapping[TP, Sequence[Record]]) -> int:
        for tp, records in fetch.items():
            self.fetched.setdefault(tp, []).extend(r.offset for r in records)
        return 0

    def sought(self, generation: Any, positions: Mapping[TP, int]) -> None:
        self.sought_at.append(dict(positions))

    def reset(self) -> None:
        return None


async def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        await asyncio.sleep(0.02)


def member(broker_url: str, datadir: Path) -> tuple[Any, Recorder]:
    """A Faust app in group :data:`GROUP` whose consumer is the engine's, with a recorder
    as its driver, subscribed to :data:`TOPIC` (not started)."""
    recorder = Recorder()
    app = faust.App(GROUP, broker=broker_url, web_enabled=False, autodiscover=False, datadir=str(datadir),
                    topic_partitions=PARTITIONS, broker_session_timeout=8.0, broker_heartbeat_interval=1.0,
                    broker_rebalance_timeout=8.0)
    app.transport.Consumer = engine_consumer_class(recorder, fetch_max_wait=0.05, end_offsets_from_fetch=False,
                                                   empty_wait=1.0)

    @app.agent(app.topic(TOPIC, key_serializer="raw", value_serializer="raw"))
    async def subscribed(stream: Any) -> None:  # the subscription; the engine takes the records
        async for _ in stream:
            pass

    return app, recorder


@pytest.fixture(scope="module")
def shared_broker(module_broker: EmbeddedBroker | KafkaBroker) -> EmbeddedBroker | KafkaBroker:
    return module_broker  # the session's Kafka, emptied for this module (tests/conftest.py)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(shared_broker: EmbeddedBroker | KafkaBroker,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Any, Recorder]]:
    """A Faust app whose consumer is the engine's, subscribed to :data:`TOPIC`, joined
    and sought (position rule 1's hook called)."""
    await create_topic(shared_broker.bootstrap, TOPIC, PARTITIONS)
    app, recorder = member(shared_broker.url, tmp_path_factory.mktemp("consumer-contract"))
    await app.start()
    try:
        await wait_for(lambda: recorder.sought_at, "the consumer joined and sought its partitions")
        yield app, recorder
    finally:
        await app.stop()


class TestEngineConsumer(ConsumerPortContract):
    @pytest.fixture
    def port(self, running: tuple[Any, Recorder], shared_broker: EmbeddedBroker | KafkaBroker) -> Any:
        self.app, self.recorder = running
        self.broker = shared_broker
        return self.app.consumer

    async def append(self, port: Any, tp: TP, n: int) -> list[int]:
        before = (await end_offsets(self.broker.bootstrap, tp.topic))[tp.partition]  # where they go
        await produce(self.broker.bootstrap, tp.topic, [(b"k", b"v")] * n, partition=tp.partition)
        return list(range(before, before + n))

    def delivered_now(self, port: Any, tp: TP) -> list[int]:
        return self.recorder.fetched.pop(tp, [])

    async def delivered(self, port: Any, tp: TP, n: int) -> list[int]:
        await wait_for(lambda: len(self.recorder.fetched.get(tp, ())) >= n, f"{n} records of {tp} delivered", 20)
        return self.delivered_now(port, tp)

    async def committed(self, port: Any, tp: TP) -> int | None:
        await port.commit()
        return (await committed(self.broker.bootstrap, tp.topic, group=GROUP)).get(tp.partition)

    @contextlib.asynccontextmanager
    async def another_member(self, port: Any) -> AsyncIterator[None]:
        with tempfile.TemporaryDirectory(prefix="consumer-contract-") as datadir:
            app, recorder = member(self.broker.url, Path(datadir))
            await app.start()
            try:
                await wait_for(lambda: recorder.sought_at, "the second member joined and sought", 60)
                yield
            finally:
                await app.stop()
