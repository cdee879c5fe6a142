"""One contract for the consumer port the position protocol drives
(:class:`~streams.engine.position.ConsumerPort`), run against the fake the engine's tests
use (:class:`streams.engine.testing.FakeConsumer`, here) and the adapter the worker runs
(:class:`streams.faust.consumer.EngineConsumer` in a running Faust app on a broker:
tests/integration/test_engine_consumer_contract.py). What the driver's tests rely on
from the fake must hold for the real consumer — and the other way round.

The rules (what :class:`~streams.engine.position.Driver` relies on):

1. ``assigned()`` holds every partition the consumer owns, as engine ``TP`` s, in a set
   of its own (the caller may keep or change it);
2. ``partition_count(topic)`` is the topic's partition count, None for a topic it does
   not know;
3. records of a partition are delivered in offset order, and ``seek(tp, offset)`` makes
   the next ones delivered start at ``offset`` (how the driver gets back what it did not
   process);
4. a paused partition delivers nothing until it is resumed; resuming a partition the
   consumer does not own is harmless (it may have been revoked meanwhile);
5. offsets acknowledged with ``acknowledge(tp, first, last)`` are committed: after a
   commit the group's offset is the one after the last of a gap-free run;
6. while nothing changes, ``generation()`` stays equal to itself and ``may_process()``
   is true (the driver compares generations around every batch);
7. a rebalance changes ``generation()`` and ``assigned()``: when another member joins the
   group some partitions move to it, when it leaves they come back — each time under a
   generation the driver has not seen (position rule 3).

Each test works on partitions of its own, so an implementation may share one consumer
between the tests (the real one costs a group join); the rebalance test comes last and
gives every partition back before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from streams.engine.records import TP
from streams.engine.testing import FakeConsumer

TOPIC = "contract-consumer"
PARTITIONS = 4


class ConsumerPortContract:
    """Subclasses provide the ``port`` fixture (every partition of :data:`TOPIC` assigned
    and ready), put records in a partition, say which were delivered, and commit."""

    async def append(self, port: Any, tp: TP, n: int) -> list[int]:
        """Write ``n`` records to ``tp``; their offsets."""
        raise NotImplementedError

    async def delivered(self, port: Any, tp: TP, n: int) -> list[int]:
        """The offsets of ``tp`` delivered since the last call, once there are ``n`` (fails
        when they do not come)."""
        raise NotImplementedError

    def delivered_now(self, port: Any, tp: TP) -> list[int]:
        """The offsets of ``tp`` delivered since the last call, without waiting."""
        raise NotImplementedError

    async def committed(self, port: Any, tp: TP) -> int | None:
        """Has the consumer commit, then the group's committed offset of ``tp``."""
        raise NotImplementedError

    def another_member(self, port: Any) -> contextlib.AbstractAsyncContextManager[None]:
        """A second member of the port's group: joins on enter, leaves on exit."""
        raise NotImplementedError

    @staticmethod
    async def eventually(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
            await asyncio.sleep(0.02)

    async def test_assigned_holds_every_owned_partition_in_a_set_of_its_own(self, port: Any) -> None:
        owned = port.assigned()
        assert {TP(TOPIC, p) for p in range(PARTITIONS)} <= owned
        owned.clear()
        assert TP(TOPIC, 0) in port.assigned() and (TOPIC, 0) in port.assigned()

    async def test_partition_count_is_the_topic_s_and_none_for_an_unknown_topic(self, port: Any) -> None:
        assert port.partition_count(TOPIC) == PARTITIONS
        assert port.partition_count("contract-no-such-topic") is None

    async def test_records_come_in_offset_order_and_a_seek_delivers_again_from_there(self, port: Any) -> None:
        tp = TP(TOPIC, 0)
        offsets = await self.append(port, tp, 5)
        assert await self.delivered(port, tp, 5) == offsets
        await port.seek(tp, offsets[2])
        assert await self.delivered(port, tp, 3) == offsets[2:]

    async def test_a_paused_partition_delivers_nothing_until_resumed(self, port: Any) -> None:
        paused, other = TP(TOPIC, 1), TP(TOPIC, 2)
        port.pause(paused)
        held = await self.append(port, paused, 3)
        for _ in range(2):  # two fetches of the other partition after the paused one's records were written
            await self.append(port, other, 1)
            assert len(await self.delivered(port, other, 1)) == 1
        assert self.delivered_now(port, paused) == []
        port.resume(TP("contract-not-owned", 0))  # harmless
        port.resume(paused)
        assert await self.delivered(port, paused, 3) == held

    async def test_acknowledged_offsets_are_committed_up_to_the_first_gap(self, port: Any) -> None:
        tp = TP(TOPIC, 3)
        offsets = await self.append(port, tp, 6)
        assert await self.delivered(port, tp, 6) == offsets
        port.acknowledge(tp, offsets[0], offsets[1])
        port.acknowledge(tp, offsets[4], offsets[5])  # a gap: offsets[2..3] not done yet
        assert await self.committed(port, tp) == offsets[1] + 1
        port.acknowledge(tp, offsets[2], offsets[3])
        assert await self.committed(port, tp) == offsets[5] + 1

    async def test_the_generation_holds_and_processing_is_allowed_while_nothing_changes(self, port: Any) -> None:
        assert port.generation() == port.generation() and port.may_process()

    async def test_a_rebalance_changes_the_generation_and_moves_partitions(self, port: Any) -> None:
        every = {TP(TOPIC, p) for p in range(PARTITIONS)}
        alone = port.generation()
        async with self.another_member(port):
            await self.eventually(lambda: port.generation() != alone and not every <= port.assigned(),
                                  "partitions moved to the member that joined")
            shared = port.generation()
            assert every & port.assigned(), "the consumer kept some partitions"
        await self.eventually(lambda: port.generation() not in (alone, shared) and every <= port.assigned(),
                              "every partition back after the other member left")


class TestFakeConsumer(ConsumerPortContract):
    @pytest.fixture
    def port(self) -> FakeConsumer:
        consumer = FakeConsumer({TP(TOPIC, p) for p in range(PARTITIONS)})
        consumer.partitions[TOPIC] = PARTITIONS
        self.seen: dict[TP, list[int]] = {}
        return consumer

    async def append(self, port: FakeConsumer, tp: TP, n: int) -> list[int]:
        return [port.append(tp, b"k", b"v").offset for _ in range(n)]

    def delivered_now(self, port: FakeConsumer, tp: TP) -> list[int]:
        for fetched_tp, records in port.fetch().items():
            self.seen.setdefault(fetched_tp, []).extend(r.offset for r in records)
        return self.seen.pop(tp, [])

    async def delivered(self, port: FakeConsumer, tp: TP, n: int) -> list[int]:
        got = self.delivered_now(port, tp)
        assert len(got) >= n, f"{tp}: {got} delivered, {n} expected"
        return got

    async def committed(self, port: FakeConsumer, tp: TP) -> int | None:
        port.commit()
        return port.committed(tp)

    @contextlib.asynccontextmanager
    async def another_member(self, port: FakeConsumer) -> AsyncIterator[None]:
        """What the group does on a join and a leave: the fake is told (its generation and
        partitions are the test's to move)."""
        every = set(port.owned)
        port.owned = {tp for tp in every if tp.partition % 2 == 0}
        port.gen += 1
        yield
        port.owned = every
        port.gen += 1
