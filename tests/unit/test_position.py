"""The consumer-position protocol (streams.engine.position.Driver), one test per rule,
each causing its hazard on purpose with a fake consumer and recording pipelines."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from streams.engine import headers as H
from streams.engine.pipeline import Superseded
from streams.engine.position import Driver
from streams.engine.records import TP, Record
from streams.engine.routing import RetryPolicy
from streams.registry import ServiceSpec
from streams.engine.testing import NOW, NOW_MS, Clock, FakeConsumer

PAID = "events.order.paid.v1"
SPEC = ServiceSpec("svc", sources=(PAID,), tables=())
OTHER = ServiceSpec("other", sources=(PAID,), tables=())
P0, P1 = TP(PAID, 0), TP(PAID, 1)
RETRY_1 = TP("svc.retry.1", 0)


class Recording:
    """A pipeline that records the batches it processed (and how many at once)."""

    def __init__(self, spec: ServiceSpec = SPEC, *, delays: tuple[float, ...] = (5.0,)) -> None:
        self.spec = spec
        self.policy = RetryPolicy(delays)
        self.batches: list[list[tuple[str, int, int]]] = []
        self.running = 0
        self.max_running = 0
        self.during: Callable[[], Any] = lambda: None
        self.maintained: list[list[int]] = []

    async def process(self, records: Sequence[Record], *, still_owner: Callable[[], bool] = lambda: True,
                      decoded: Any = None) -> Counter[str]:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(0)
            self.during()
            self.batches.append([(r.topic, r.partition, r.offset) for r in records])
            if not still_owner():
                raise Superseded("moved")
            return Counter(success=len(records))
        finally:
            self.running -= 1

    async def maintain(self, partitions: Sequence[int], *, still_owner: Callable[[], bool] = lambda: True) -> int:
        self.maintained.append(list(partitions))
        return 0

    def offsets(self, tp: TP) -> list[int]:
        return [o for b in self.batches for (t, p, o) in b if (t, p) == tp]


def recs(tp: TP, first: int, last: int, **headers: bytes) -> list[Record]:
    return [Record(tp.topic, tp.partition, o, b"k%d" % o, b"{}", NOW_MS - 1000, dict(headers))
            for o in range(first, last + 1)]


def make(*pipelines: Any, batch_size: int = 500, clock: Clock | None = None) -> Driver:
    return Driver(list(pipelines), batch_size=batch_size, clock=clock or Clock(NOW))


# -- rule 1: nothing before recovery and the seek ----------------------------------------


async def test_a_fetch_before_the_seek_is_not_processed_and_goes_back() -> None:
    """Regression: a fetch (offsets 37-536) arrived after table recovery but before the
    seek to committed offsets; it was skipped and the next fetch committed over it."""
    p = Recording()
    d = make(p)
    consumer = FakeConsumer({P0})
    await d.on_fetch(consumer, {P0: recs(P0, 37, 536)})
    assert p.batches == [] and consumer.acks == []
    assert consumer.seeks == [(P0, 37)]
    d.sought(consumer.generation(), {P0: 0})  # committed offset: nothing committed yet
    await d.on_fetch(consumer, {P0: recs(P0, 537, 600)})  # the next fetch, past the hole
    assert p.batches == [] and consumer.acks == []
    assert consumer.seeks[-1] == (P0, 0)
    await d.on_fetch(consumer, {P0: recs(P0, 0, 600)})
    assert p.offsets(P0) == list(range(0, 601))
    assert consumer.acked_offsets(P0) == list(range(0, 601))


async def test_nothing_is_processed_while_the_consumer_may_not_process() -> None:
    p = Recording()
    d = make(p)
    consumer = FakeConsumer({P0})
    d.sought(consumer.generation(), {P0: 0})
    consumer.ready = False  # recovery or a rebalance in progress
    await d.on_fetch(consumer, {P0: recs(P0, 0, 9)})
    assert p.batches == [] and consumer.seeks == [(P0, 0)]


async def test_positions_of_an_older_generation_do_not_count() -> None:
    p = Recording()
    d = make(p)
    consumer = FakeConsumer({P0})
    d.sought(consumer.generation(), {P0: 0})
    consumer.gen += 1  # rebalanced since
    await d.on_fetch(consumer, {P0: recs(P0, 0, 9)})
    assert p.batches == []


# -- rule 2: what is not processed goes back ---------------------------------------------


async def test_a_hole_is_sought_back_and_only_a_confirmed_gap_is_skipped() -> None:
    p = Recording()
    d = make(p)
    consumer = FakeConsumer({P0})
    d.sought(consumer.generation(), {P0: 10})
    await d.on_fetch(consumer, {P0: recs(P0, 15, 20)})
    assert p.batches == [] and consumer.seeks == [(P0, 10)]
    # the broker answers the seek from 15 again: offsets 10-14 are not in the log
    await d.on_fetch(consumer, {P0: recs(P0, 15, 20)})
    assert p.offsets(P0) == list(range(15, 21))


async def test_records_already_processed_are_dropped() -> None:
    p = Recording()
    d = make(p)
    consumer = FakeConsumer({P0})
    d.sought(consumer.generation(), {P0: 0})
    await d.on_fetch(consumer, {P0: recs(P0, 0, 9)})
    await d.on_fetch(consumer, {P0: recs(P0, 5, 14)})  # e.g. a fetch that overlapped a seek
    assert p.offsets(P0) == list(range(0, 15))


# -- rule 3: a rebalance stops work at the next batch boundary -----------------------------


async def test_a_rebalance_stops_the_fetch_at_the_batch_boundary() -> None:
    p = Recording()
    d = make(p, batch_size=100)
    consumer = FakeConsumer({P0})
    d.sought(consumer.generation(), {P0: 0})
    calls = 0

    def rebalance_after_first() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            consumer.gen += 1  # a second worker joined while batch 1 ran

    p.during = rebalance_after_first
    await d.on_fetch(consumer, {P0: recs(P0, 0, 499)})
    assert len(p.batches) == 1, "no handler call after the boundary"
    assert consumer.acks == [], "the batch that ran across the rebalance is not acknowledged"
    assert consumer.seeks == [(P0, 0)]


# -- rule 4: offsets per batch --------------------------------------------------------------


async def test_offsets_are_acknowledged_per_batch_with_partitions_sharing_fairly() -> None:
    p = Recording()
    d = make(p, batch_size=100)
    consumer = FakeConsumer({P0, P1})
    d.sought(consumer.generation(), {P0: 0, P1: 0})
    await d.on_fetch(consumer, {P0: recs(P0, 0, 249), P1: recs(P1, 0, 49)})
    assert all(len(b) <= 100 for b in p.batches)
    assert {(t, pa) for t, pa, _ in p.batches[0]} == {(PAID, 0), (PAID, 1)}, "both partitions in batch 1"
    assert consumer.acked_offsets(P0) == list(range(250))
    assert consumer.acked_offsets(P1) == list(range(50))
    assert len(consumer.acks) >= 4


async def test_a_topic_two_services_read_is_acknowledged_once_both_are_done() -> None:
    a, b = Recording(SPEC), Recording(OTHER)
    d = make(a, b)
    consumer = FakeConsumer({P0})
    d.sought(consumer.generation(), {P0: 0})

    def b_fails() -> None:
        raise Superseded("b's partitions moved")

    b.during = b_fails
    await d.on_fetch(consumer, {P0: recs(P0, 0, 9)})
    assert a.offsets(P0) == list(range(10))
    assert consumer.acks == []
    b.during = lambda: None
    await d.on_fetch(consumer, {P0: recs(P0, 0, 9)})
    assert consumer.acked_offsets(P0) == list(range(10))


# -- rule 5: one key in one pipeline at a time ----------------------------------------------


async def test_main_topic_and_retry_tier_batches_never_overlap() -> None:
    """Regression: a retry tier and the main pipeline ran the same key at once (two
    gateway calls)."""
    p = Recording()
    d = make(p, batch_size=10)
    consumer = FakeConsumer({P0, RETRY_1})
    d.sought(consumer.generation(), {P0: 0, RETRY_1: 0})
    due = {H.NOT_BEFORE: b"0", H.SOURCE_TOPIC: PAID.encode()}
    await d.on_fetch(consumer, {P0: recs(P0, 0, 29), RETRY_1: recs(RETRY_1, 0, 29, **due)})
    assert p.max_running == 1
    assert p.offsets(RETRY_1) == list(range(30))


# -- retry tiers: due records only --------------------------------------------------------


async def test_a_retry_partition_waits_paused_until_its_head_is_due() -> None:
    clock = Clock(NOW)
    p = Recording(delays=(5.0,))
    d = make(p, clock=clock)
    consumer = FakeConsumer({RETRY_1})
    d.sought(consumer.generation(), {RETRY_1: 0})
    due = recs(RETRY_1, 0, 1, **{H.NOT_BEFORE: str(NOW_MS - 1).encode()})
    later = recs(RETRY_1, 2, 3, **{H.NOT_BEFORE: str(NOW_MS + 4000).encode()})
    await d.on_fetch(consumer, {RETRY_1: due + later})
    assert p.offsets(RETRY_1) == [0, 1]
    assert RETRY_1 in consumer.paused and consumer.seeks[-1] == (RETRY_1, 2)
    await d.tick(consumer)
    assert RETRY_1 in consumer.paused
    clock.now += 4.0
    await d.tick(consumer)
    assert RETRY_1 not in consumer.paused
    await d.on_fetch(consumer, {RETRY_1: later})
    assert p.offsets(RETRY_1) == [0, 1, 2, 3]


async def test_a_forged_not_before_cannot_park_a_partition_longer_than_its_tier() -> None:
    clock = Clock(NOW)
    p = Recording(delays=(5.0,))
    d = make(p, clock=clock)
    consumer = FakeConsumer({RETRY_1})
    d.sought(consumer.generation(), {RETRY_1: 0})
    await d.on_fetch(consumer, {RETRY_1: recs(RETRY_1, 0, 0, **{H.NOT_BEFORE: b"253402214400000"})})
    assert d.paused[RETRY_1][0] <= NOW_MS + 5000


# -- maintenance -------------------------------------------------------------------------------


async def test_maintenance_runs_on_ready_partitions_only() -> None:
    p = Recording()
    d = make(p)
    consumer = FakeConsumer({P0, P1})
    d.sought(consumer.generation(), {P1: 0})
    await d.tick(consumer)
    assert p.maintained == [[1]]


async def test_a_retry_record_stamped_in_the_future_is_due_at_once() -> None:
    """Regression (found by the fuzzer): a year-9999 x-not-before or broker timestamp
    on a retry record parked its partition for good (the clamp moved with the clock)."""
    clock = Clock(NOW)
    p = Recording(delays=(5.0,))
    d = make(p, clock=clock)
    consumer = FakeConsumer({RETRY_1})
    d.sought(consumer.generation(), {RETRY_1: 0})
    future = Record(RETRY_1.topic, 0, 0, b"k", b"{}", 253402214400000, {H.NOT_BEFORE: b"253402214400000"})
    await d.on_fetch(consumer, {RETRY_1: [future]})
    assert p.offsets(RETRY_1) == [0]
    assert d.seconds_until_due() is None


async def test_the_fetch_wait_is_bounded_by_the_next_due_retry() -> None:
    clock = Clock(NOW)
    p = Recording(delays=(0.5,))
    d = make(p, clock=clock)
    consumer = FakeConsumer({RETRY_1})
    d.sought(consumer.generation(), {RETRY_1: 0})
    waiting = Record(RETRY_1.topic, 0, 0, b"k", b"{}", NOW_MS, {H.NOT_BEFORE: str(NOW_MS + 300).encode()})
    await d.on_fetch(consumer, {RETRY_1: [waiting]})
    assert d.seconds_until_due() == 0.3


async def test_records_on_a_partition_their_key_does_not_map_to_are_sent_on_not_processed() -> None:
    """Regression (found by the fuzzer): the same OrderPaid written to a partition its
    key does not map to was processed a second time (dedup state is per partition)."""
    from streams.engine.keys import key_partition
    from streams.engine.position import REROUTED_FROM
    from streams.engine.testing import FakePublisher

    publisher = FakePublisher()
    p = Recording()
    d = Driver([p], batch_size=500, clock=Clock(NOW), publisher=publisher)
    consumer = FakeConsumer({P0})
    consumer.partitions[PAID] = 4
    d.sought(consumer.generation(), {P0: 0})
    keys = [f"o-{i}".encode() for i in range(40)]
    records = [Record(PAID, 0, i, k, b"{}", NOW_MS) for i, k in enumerate(keys)]
    await d.on_fetch(consumer, {P0: records})
    home = [r for r in records if key_partition(r.key, 4) == 0]
    away = [r for r in records if key_partition(r.key, 4) != 0]
    assert home and away
    assert p.offsets(P0) == [r.offset for r in home]
    assert sorted((m.key, m.partition) for m in publisher.sent) == sorted(
        (r.key, key_partition(r.key, 4)) for r in away)
    assert all(dict(m.headers)[REROUTED_FROM] == f"0:{r.offset}".encode()
               for m, r in zip(publisher.sent, away))
    assert consumer.acked_offsets(P0) == list(range(40))  # the rerouted ones are done here
    assert d.rerouted[PAID] == len(away)
