"""A handler that keeps a state transaction past its batch cannot lose a write.

The hazard: a transaction is a batch's view of one table partition, flushed once at
the end of the batch (the commit protocol's step 5, streams/engine/pipeline.py). A
handler that kept it and wrote to it in a later batch wrote into a transaction
nobody would flush again: the later batch succeeded, its offsets were acknowledged
and the write was gone, with no error anywhere. Now the write raises
:class:`~streams.engine.ports.TransactionClosed`, so the event fails like any handler
error (a retry, then the DLQ) and nothing is acknowledged as done that was not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams.engine import headers as H
from streams.engine.pipeline import Batch, Item, Pipeline
from streams.engine.ports import Transaction
from streams.engine.records import Record
from streams.engine.routing import RetryPolicy
from streams.engine.testing import NOW, Clock, FakePublisher, MemoryStore
from streams.engine.topology import ServiceSpec
from streams.metrics import Metrics

TABLE = "kept-state"
SOURCE = "kept.events"
SPEC = ServiceSpec(name="kept", sources=(SOURCE,), tables=(TABLE,))


class KeepsItsTransaction:
    """Writes each event's value under its key — through the transaction of the first
    batch it saw, kept in an attribute (the bug this test is about)."""

    spec = SPEC
    dedup_table = None

    def __init__(self) -> None:
        self.kept: Transaction | None = None

    def type_of(self, topic: str) -> str:
        return "Kept"

    def decoder(self, topic: str) -> Any:
        return "bytes"

    def decode(self, topic: str, record: Record) -> Any:
        return record.value

    async def handle(self, items: Sequence[Item], batch: Batch) -> None:
        for item in items:
            try:
                if self.kept is None:
                    self.kept = batch.tx(TABLE, item.partition)
                self.kept.set(item.key, item.message)
                item.succeed()
            except Exception as exc:
                item.fail(exc)

    async def maintain(self, batch: Batch, partitions: Sequence[int]) -> None:
        return None

    def indexers(self) -> dict[str, Any]:
        return {}


def record(key: bytes, value: bytes, offset: int) -> Record:
    return Record(SOURCE, 0, offset, key, value, int(NOW * 1000))


async def test_a_write_to_a_transaction_kept_past_its_batch_fails_its_event_instead_of_vanishing() -> None:
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    policy = RetryPolicy((1.0,))
    allowed = {*SPEC.retry_topics(1), SPEC.dlq, f"{TABLE}-changelog"}
    pipeline = Pipeline(KeepsItsTransaction(), publisher=publisher, store=store, counts=Metrics(),
                        policy=policy, allowed=allowed.__contains__, ttl_ms=60_000, clock=Clock(NOW),
                        send_backoff=0.001)
    assert await pipeline.process([record(b"o-1", b"first", 0)]) == {"success": 1}
    assert store.read(TABLE, 0, [b"o-1"]) == [b"first"]

    outcome = await pipeline.process([record(b"o-2", b"second", 1)])

    assert outcome == {"retry": 1}, "the late write must fail its event, not succeed and vanish"
    [retry] = publisher.to(SPEC.retry_topics(1)[0])
    assert retry.key == b"o-2" and b"TransactionClosed" in dict(retry.headers)[H.ERROR_MESSAGE]
    assert store.read(TABLE, 0, [b"o-1", b"o-2"]) == [b"first", None]


