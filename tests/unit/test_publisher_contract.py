"""One contract for the :class:`~streams.engine.ports.Publisher` port, run against the fake
the engine's tests use (:class:`streams.engine.testing.FakePublisher`, here) and the adapter
the worker runs (:class:`streams.faust.publisher.KafkaPublisher` on a broker:
tests/integration/test_kafka_publisher_contract.py). What the engine's tests rely on from
the fake must hold for the real publisher — and the other way round.

The rules (the port's docstring, :meth:`~streams.engine.ports.Publisher.send_many`):

1. one ack per message, in the order given; each ack's offset
   (:func:`~streams.engine.delivery.gather_acks`) is where its record is in the log;
2. a message goes to its ``partition`` when the topic has that partition, else to the one
   its key hashes to among the topic's partitions (Kafka's default partitioner);
3. records of one partition are in the log in the order they were given, across batches;
4. key, value (``None``: a tombstone) and every header, in order and repeated names kept,
   arrive as given;
5. :meth:`~streams.engine.ports.Publisher.send_partition` writes ``(key, value)`` records to
   that one partition, in order, one ack each.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import pytest

from streams.engine.delivery import gather_acks
from streams.engine.keys import key_partition
from streams.engine.ports import Publisher
from streams.engine.records import Outgoing
from streams.engine.testing import FakePublisher


class Logged(NamedTuple):
    """A record as the topic holds it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class PublisherContract:
    """Subclasses open a publisher on topics with the given partition counts, and read back
    what a topic holds."""

    def open_publisher(self, topics: dict[str, int]) -> contextlib.AbstractAsyncContextManager[Publisher]:
        raise NotImplementedError

    async def logged(self, publisher: Publisher, topic: str, expect: int) -> list[Logged]:
        """Every record of ``topic`` (at least ``expect``), by partition and offset."""
        raise NotImplementedError

    @staticmethod
    def topic(name: str) -> str:
        return f"contract-{name}-{uuid.uuid4().hex[:8]}"

    async def sent(self, publisher: Publisher, messages: Sequence[Outgoing]) -> list[int]:
        acks = await publisher.send_many(messages)
        assert len(acks) == len(messages), "one ack per message"
        offsets = await gather_acks(acks)
        assert all(isinstance(o, int) for o in offsets), offsets
        return offsets  # type: ignore[return-value]

    async def test_each_ack_is_the_offset_where_its_record_is(self) -> None:
        t = self.topic("acks")
        async with self.open_publisher({t: 2}) as publisher:
            messages = [Outgoing(t, f"k{i}".encode(), f"v{i}".encode(), (), i % 2) for i in range(6)]
            offsets = await self.sent(publisher, messages)
            log = {(r.partition, r.offset): r for r in await self.logged(publisher, t, expect=6)}
        assert len(log) == 6
        for m, offset in zip(messages, offsets):
            assert log[(m.partition, offset)].key == m.key and log[(m.partition, offset)].value == m.value

    async def test_a_partition_the_topic_has_is_kept_and_otherwise_the_key_chooses(self) -> None:
        t = self.topic("placement")
        async with self.open_publisher({t: 3}) as publisher:
            keys = [f"order-{i}".encode() for i in range(12)]
            explicit = [Outgoing(t, k, b"explicit", (), 2) for k in keys[:4]]
            by_key = [Outgoing(t, k, b"by-key", (), None) for k in keys[4:8]]
            missing = [Outgoing(t, k, b"missing", (), 7) for k in keys[8:]]  # the topic has no partition 7
            await self.sent(publisher, [*explicit, *by_key, *missing])
            where = {r.key: r.partition for r in await self.logged(publisher, t, expect=12)}
        assert {where[m.key] for m in explicit} == {2}
        assert [where[m.key] for m in by_key + missing] == [key_partition(m.key, 3) for m in by_key + missing]

    async def test_order_within_a_partition_holds_across_many_records(self) -> None:
        t = self.topic("order")
        async with self.open_publisher({t: 2}) as publisher:
            messages = [Outgoing(t, f"k{i % 7}".encode(), f"{i:05d}".encode() + b"." * 200, (), i % 2)
                        for i in range(400)]  # more than one producer batch per partition
            offsets = await self.sent(publisher, messages)
            log = await self.logged(publisher, t, expect=400)
        for partition in (0, 1):
            mine = [m.value for m in messages if m.partition == partition]
            assert [r.value for r in sorted(log, key=lambda r: r.offset) if r.partition == partition] == mine
            assert sorted(o for m, o in zip(messages, offsets) if m.partition == partition) == \
                [o for m, o in zip(messages, offsets) if m.partition == partition]

    async def test_keys_values_tombstones_and_headers_arrive_as_given(self) -> None:
        t = self.topic("shape")
        headers = (("trace", b"a"), ("x-dlq-reason", b"too_large"), ("trace", b"b"), ("empty", b""))
        async with self.open_publisher({t: 1}) as publisher:
            await self.sent(publisher, [Outgoing(t, b"o-1", b"{}", headers, 0), Outgoing(t, b"o-1", None, (), 0),
                                        Outgoing(t, b"o-2", b"", (), 0)])
            log = sorted(await self.logged(publisher, t, expect=3), key=lambda r: r.offset)
        assert [(r.key, r.value, r.headers) for r in log] == [
            (b"o-1", b"{}", headers), (b"o-1", None, ()), (b"o-2", b"", ())]

    async def test_send_partition_writes_its_records_to_that_partition_in_order(self) -> None:
        t = self.topic("changelog")
        records = [(f"k{i}".encode(), None if i % 3 == 2 else f"v{i}".encode()) for i in range(9)]
        async with self.open_publisher({t: 4}) as publisher:
            acks = await publisher.send_partition(t, 3, records)
            assert len(acks) == len(records)
            offsets = await gather_acks(acks)
            log = await self.logged(publisher, t, expect=9)
        assert offsets == list(range(offsets[0], offsets[0] + 9))  # type: ignore[arg-type, operator]
        assert [(r.partition, r.offset, r.key, r.value) for r in sorted(log, key=lambda r: r.offset)] == \
            [(3, o, k, v) for o, (k, v) in zip(offsets, records)]


class TestFakePublisher(PublisherContract):
    @contextlib.asynccontextmanager
    async def open_publisher(self, topics: dict[str, int]) -> AsyncIterator[Publisher]:
        yield FakePublisher(partitions=topics)

    async def logged(self, publisher: Publisher, topic: str, expect: int) -> list[Logged]:
        assert isinstance(publisher, FakePublisher)
        out = []
        for message, future in zip(publisher.sent, publisher.futures):
            if message.topic == topic and future.done() and future.exception() is None:
                meta: Any = future.result()
                out.append(Logged(meta.partition, meta.offset, message.key, message.value, message.headers))
        assert len(out) >= expect
        return out


async def test_the_fake_holds_acks_until_released_and_fails_them_on_demand() -> None:
    """The fake's own knobs, which the engine's tests drive (not part of the port)."""
    publisher = FakePublisher(auto_ack=False, partitions={"t": 1})
    acks = await publisher.send_many([Outgoing("t", b"k", b"v", (), None)] * 2)
    assert [f.done() for f, _ in acks] == [False, False] and len(publisher.pending()) == 2
    assert publisher.release(1) == 1 and [f.done() for f, _ in acks] == [True, False]
    publisher.fail_acks = 1
    [(failed, _)] = await publisher.send_many([Outgoing("t", b"k", b"v", (), 0)])
    with pytest.raises(ConnectionError):
        await failed
