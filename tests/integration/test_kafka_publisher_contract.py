"""The Publisher contract (tests/unit/test_publisher_contract.py) against the adapter the
worker runs: :class:`streams.faust.publisher.KafkaPublisher` on a Faust producer, on a
real broker (the session's Apache Kafka; Tansu with ``TEST_BROKER=tansu``).

One broker for the module (each test has its own topics): a broker per test would cost a
start each for no isolation the topics do not already give.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import faust
import pytest
from aiokafka import AIOKafkaConsumer

from harness.kafka import create_topic, topic_partitions
from streams.broker import EmbeddedBroker, KafkaBroker
from streams.engine.ports import Publisher
from streams.faust.publisher import KafkaPublisher
from tests.unit.test_publisher_contract import Logged, PublisherContract

pytestmark = pytest.mark.kafka

#: small producer batches, so a few hundred records take several (rule 3 across batches)
BATCH_BYTES = 4096


@pytest.fixture(scope="module")
def shared_broker(module_broker: EmbeddedBroker | KafkaBroker) -> EmbeddedBroker | KafkaBroker:
    return module_broker  # the session's Kafka, emptied for this module (tests/conftest.py)


class TestKafkaPublisher(PublisherContract):
    @pytest.fixture(autouse=True)
    def _broker(self, shared_broker: EmbeddedBroker | KafkaBroker) -> None:
        self.broker = shared_broker

    @contextlib.asynccontextmanager
    async def open_publisher(self, topics: dict[str, int]) -> AsyncIterator[Publisher]:
        for topic, partitions in topics.items():
            await create_topic(self.broker.bootstrap, topic, partitions)
        app = faust.App(f"publisher-contract-{time.monotonic_ns()}", broker=self.broker.url,
                        producer_max_batch_size=BATCH_BYTES)
        await app.producer.start()
        try:
            yield KafkaPublisher(app, max_message_bytes=1024 * 1024)
        finally:
            await app.producer.stop()

    async def logged(self, publisher: Publisher, topic: str, expect: int) -> list[Logged]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=100)
        await consumer.start()
        out: list[Logged] = []
        try:
            tps = await topic_partitions(consumer, topic)  # the topic exists: its records were acknowledged
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + 20
            while len(out) < expect:
                assert time.monotonic() < deadline, f"{topic}: {len(out)} of {expect} records within 20 s"
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(Logged(r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                               for r in records)
        finally:
            await consumer.stop()
        return out
