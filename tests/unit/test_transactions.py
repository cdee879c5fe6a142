"""Exactly-once (streams.engine.transactions, position rule 7): each step T1–T6 and
each failure mode caused on purpose, with the real driver and pipeline over fakes of
a transactional producer and a broker that keeps transactions apart (what a
``read_committed`` consumer sees is :attr:`Broker.visible`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from agents.notifications import NotificationsService
from streams.engine.pipeline import Pipeline
from streams.engine.position import Driver
from streams.engine.records import TP, Ack, Outgoing
from streams.engine.routing import RetryPolicy
from streams.engine.testing import NOW, Clock, FakeConsumer, FakePublisher, MemoryStore, wait_until
from streams.engine.transactions import (
    Fenced,
    ProducerDead,
    TransactionDoomed,
    Transactions,
    current,
    doomed,
    transactional_id,
)
from streams.events import NotificationSent
from streams.metrics import Metrics
from streams.registry import topics_written
from tests.unit.fakes import PAID_TOPIC, FakeNotifier, paid_record

GROUP = "order-streams"
DELAYS = (1.0, 2.0)
DEDUP = "notifications-dedup"
SENT = NotificationSent.topic()
P0, P1 = TP(PAID_TOPIC, 0), TP(PAID_TOPIC, 1)
ALLOWED = topics_written(len(DELAYS)) | {f"{DEDUP}-changelog"}


class Broker:
    """Transactions as the broker keeps them: records of an open transaction are
    invisible until its commit, gone on abort; a producer start bumps the id's epoch,
    aborts the open transaction and fences the older producer."""

    def __init__(self) -> None:
        self.epochs: dict[str, int] = {}
        self.open: dict[str, list[Outgoing]] = {}
        self.offsets_open: dict[str, dict[TP, int]] = {}
        self.visible: list[Outgoing] = []
        self.committed_offsets: dict[TP, int] = {}
        self.commits = 0
        #: transactional ids whose next commit fails as a transaction timeout does
        self.time_out: set[str] = set()

    def abort(self, tid: str) -> None:
        self.open.pop(tid, None)
        self.offsets_open.pop(tid, None)

    def commit(self, tid: str) -> None:
        self.visible += self.open.pop(tid, [])
        self.committed_offsets.update(self.offsets_open.pop(tid, {}))
        self.commits += 1

    def texts(self, topic: str) -> list[bytes | None]:
        return [m.key for m in self.visible if m.topic == topic]


class FakeTxnProducer:
    """aiokafka's transactional producer as seen through the adapter: Fenced once a
    newer producer of its id started; after a fence its sender is dead, so the next
    abort raises too (as aiokafka's FATAL_ERROR state does)."""

    def __init__(self, tid: str, broker: Broker, log: list[tuple[Any, ...]]) -> None:
        self.transactional_id = tid
        self.broker = broker
        self.log = log
        self.client = self
        self.epoch: int | None = None
        self.dead: BaseException | None = None
        self.in_txn = False
        self.closed = False
        self.fail_offsets = 0
        self.fail_commit = 0

    def _check(self) -> None:
        if self.dead is not None:
            raise self.dead
        if self.broker.epochs.get(self.transactional_id) != self.epoch:
            self.dead = Fenced(f"{self.transactional_id} epoch {self.epoch}")
            raise self.dead

    async def start(self) -> None:
        self.broker.abort(self.transactional_id)
        self.epoch = self.broker.epochs[self.transactional_id] = self.broker.epochs.get(self.transactional_id, 0) + 1
        self.log.append(("start", self.transactional_id, self.epoch))

    async def begin(self) -> None:
        assert not self.in_txn, "begin inside a transaction"
        self.in_txn = True
        self.log.append(("begin", self.transactional_id))

    async def send_offsets(self, offsets: Mapping[TP, int], group_id: str) -> None:
        self.log.append(("offsets", self.transactional_id, dict(offsets), group_id))
        self._check()
        if self.fail_offsets:
            self.fail_offsets -= 1
            raise ConnectionError("TxnOffsetCommit failed")
        self.broker.offsets_open[self.transactional_id] = dict(offsets)

    async def commit(self) -> None:
        self.log.append(("commit", self.transactional_id))
        if self.transactional_id in self.broker.time_out:  # the coordinator aborted it and bumped the epoch
            self.broker.time_out.discard(self.transactional_id)
            self.broker.abort(self.transactional_id)
            self.broker.epochs[self.transactional_id] += 1
        self._check()
        if self.fail_commit:
            self.fail_commit -= 1
            raise ConnectionError("EndTxn failed")
        self.broker.commit(self.transactional_id)
        self.in_txn = False

    async def abort(self) -> None:
        self.log.append(("abort", self.transactional_id))
        self._check()
        self.broker.abort(self.transactional_id)
        self.in_txn = False

    async def close(self) -> None:
        self.closed = True
        self.log.append(("close", self.transactional_id))


class TxnPublisher(FakePublisher):
    """Sends go into the open transaction of :func:`current` (as the worker's publisher
    sends through the partition's producer); outside one they are visible at once."""

    def __init__(self, broker: Broker, **kw: Any) -> None:
        super().__init__(**kw)
        self.broker = broker
        #: acks that fail as a fenced producer's do
        self.fence_acks = False

    async def send_many(self, messages: Sequence[Outgoing]) -> list[Ack]:
        txn = current()
        acks = await super().send_many(messages)
        for m, (fut, _) in zip(messages, acks):
            if txn is None:
                self.broker.visible.append(m)
                continue
            producer = txn.producer
            assert isinstance(producer, FakeTxnProducer)
            try:
                producer._check()
            except Fenced as exc:
                if not fut.done():
                    fut.set_exception(exc)
                else:  # already acked: replace with a failed ack
                    acks[acks.index((fut, _))] = (_failed(exc), 0)
                continue
            self.broker.open.setdefault(producer.transactional_id, []).append(m)
        return acks


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


class Harness:
    def __init__(self, *, batch_size: int = 500, assigned: set[TP] | None = None) -> None:
        self.broker = Broker()
        self.log: list[tuple[Any, ...]] = []
        self.publisher = TxnPublisher(self.broker, log=self.log)
        self.store = MemoryStore(self.publisher)
        self.notifier = FakeNotifier()
        self.producers: list[FakeTxnProducer] = []
        self.stopped: list[TP] = []
        self.pipeline = Pipeline(
            NotificationsService(self.notifier, concurrency=8), publisher=self.publisher, store=self.store,
            counts=Metrics(), policy=RetryPolicy(DELAYS), allowed=ALLOWED.__contains__,
            ttl_ms=3_600_000, clock=Clock(NOW), send_backoff=0.001,
        )
        self.txns = Transactions(self.make, GROUP, on_stopped=self.stopped.append, write_backoff=0.001)
        self.driver = Driver([self.pipeline], batch_size=batch_size, clock=Clock(NOW), transactions=self.txns)
        self.consumer = FakeConsumer(assigned or {P0, P1})

    def make(self, tid: str) -> FakeTxnProducer:
        p = FakeTxnProducer(tid, self.broker, self.log)
        self.producers.append(p)
        return p

    async def ready(self, positions: dict[TP, int] | None = None) -> None:
        """The consumer's seek after recovery: producers first (T1), then positions."""
        await self.txns.assign(self.consumer.owned)
        self.driver.sought(self.consumer.gen, positions or {tp: 0 for tp in self.consumer.owned})

    async def fetch(self, fetch: dict[TP, list[Any]]) -> int:
        return await asyncio.wait_for(self.driver.on_fetch(self.consumer, fetch), 5)

    def producer(self, tp: TP) -> FakeTxnProducer:
        p = self.txns.producers[tp]
        assert isinstance(p, FakeTxnProducer)
        return p

    def markers(self, partition: int) -> set[bytes]:
        return {k for k in self.store.table(DEDUP, partition) if not k.startswith(b"\x00")}


def paid(tp: TP, first: int, last: int) -> list[Any]:
    return [paid_record(f"o-{tp.partition}-{o}", partition=tp.partition, offset=o) for o in range(first, last + 1)]


# -- T1 / T2: one transaction per batch and input partition -------------------------------


async def test_a_batch_commits_its_records_state_and_offset_in_its_partitions_transaction() -> None:
    h = Harness()
    await h.ready()
    assert await h.fetch({P0: paid(P0, 0, 2), P1: paid(P1, 0, 1)}) == 5
    # one producer per input partition, with the stable id, started before processing
    assert sorted(p.transactional_id for p in h.producers) == [
        transactional_id(GROUP, P0), transactional_id(GROUP, P1)] == [
        f"{GROUP}-{PAID_TOPIC}-0", f"{GROUP}-{PAID_TOPIC}-1"]
    # each partition's batch was its own transaction: derived events and changelog
    # records together, then the next offset, then the commit
    assert h.broker.commits == 2
    assert h.broker.committed_offsets == {P0: 3, P1: 2}
    assert sorted(h.broker.texts(SENT)) == sorted(f"o-{p}-{o}".encode() for p, n in ((0, 3), (1, 2)) for o in range(n))
    assert len(h.broker.texts(f"{DEDUP}-changelog")) == 5
    assert h.markers(0) == {b"o-0-0", b"o-0-1", b"o-0-2"} and h.markers(1) == {b"o-1-0", b"o-1-1"}
    assert h.consumer.acks == []  # no non-transactional offset commit besides the transaction's
    for tid in (transactional_id(GROUP, P0), transactional_id(GROUP, P1)):
        steps = [e[0] for e in h.log if len(e) > 1 and e[1] == tid and e[0] in ("begin", "offsets", "commit")]
        assert steps == ["begin", "offsets", "commit"]


async def test_offsets_are_sent_once_after_every_ack_of_the_batch() -> None:
    """Guard for aiokafka #1098/#1004 (both in the offset commit inside aiokafka's
    sender): one send_offsets per transaction, with no send of it still unacknowledged."""
    h = Harness()
    await h.ready()
    pending_at_offsets: list[int] = []
    original = FakeTxnProducer.send_offsets

    async def watching(self: FakeTxnProducer, offsets: Mapping[TP, int], group_id: str) -> None:
        pending_at_offsets.append(len(h.publisher.pending()))
        await original(self, offsets, group_id)

    FakeTxnProducer.send_offsets = watching  # type: ignore[method-assign]
    try:
        await h.fetch({P0: paid(P0, 0, 9)})
    finally:
        FakeTxnProducer.send_offsets = original  # type: ignore[method-assign]
    assert pending_at_offsets == [0]


async def test_batches_hold_one_partition_each_and_take_turns() -> None:
    h = Harness(batch_size=2)
    await h.ready()
    await h.fetch({P0: paid(P0, 0, 3), P1: paid(P1, 0, 1)})
    offsets = [e[2] for e in h.log if e[0] == "offsets"]
    assert offsets == [{P0: 2}, {P1: 2}, {P0: 4}]


# -- T3: local state only after the commit --------------------------------------------------


async def test_local_state_is_written_only_after_the_commit() -> None:
    h = Harness()
    await h.ready()
    seen_at_commit: list[set[bytes]] = []
    original = FakeTxnProducer.commit

    async def watching(self: FakeTxnProducer) -> None:
        seen_at_commit.append(h.markers(0))
        await original(self)

    FakeTxnProducer.commit = watching  # type: ignore[method-assign]
    try:
        await h.fetch({P0: paid(P0, 0, 1)})
    finally:
        FakeTxnProducer.commit = original  # type: ignore[method-assign]
    assert seen_at_commit == [set()]
    assert h.markers(0) == {b"o-0-0", b"o-0-1"}


async def test_a_local_write_that_fails_after_the_commit_is_written_again() -> None:
    h = Harness()
    await h.ready()
    real = h.store.table
    failures = [OSError("DATA_DIR full")]

    def flaky(name: str, partition: int) -> dict[bytes, bytes]:
        if failures and current() is None and name == DEDUP:
            raise failures.pop()
        return real(name, partition)

    h.store.table = flaky  # type: ignore[method-assign]
    await h.fetch({P0: paid(P0, 0, 0)})
    assert failures == [] and h.markers(0) == {b"o-0-0"} and h.broker.committed_offsets == {P0: 1}


# -- T4: every other failure aborts; the batch is read again -------------------------------


@pytest.mark.parametrize("where", ["derived send", "changelog send", "offsets", "commit"])
async def test_a_failure_inside_the_batch_aborts_it_and_the_batch_is_read_again(where: str) -> None:
    h = Harness()
    await h.ready()
    p0 = h.producer(P0)
    if where == "derived send":
        h.publisher.fail_acks = 1  # the first send of the batch: a NotificationSent
    elif where == "changelog send":
        h.publisher.reject[f"{DEDUP}-changelog"] = ConnectionError("leader moved")
    elif where == "offsets":
        p0.fail_offsets = 1
    else:
        p0.fail_commit = 1
    assert await h.fetch({P0: paid(P0, 0, 2)}) == 0
    assert ("abort", p0.transactional_id) in h.log
    assert h.broker.visible == [] and h.broker.committed_offsets == {}
    assert h.markers(0) == set()  # nothing local from an aborted batch
    assert h.consumer.seeks[-1] == (P0, 0)  # read again from its first record
    h.publisher.reject.clear()
    # the same producer, the same batch again: committed once
    assert await h.fetch({P0: paid(P0, 0, 2)}) == 3
    assert sorted(h.broker.texts(SENT)) == [b"o-0-0", b"o-0-1", b"o-0-2"]
    assert h.broker.committed_offsets == {P0: 3} and h.txns.owns(P0)


async def test_a_send_the_broker_refuses_for_good_dead_letters_its_event_in_the_next_transaction() -> None:
    """T7: an ACL denial of a derived topic is permanent, and the transaction cannot
    commit after it. The batch aborts once; its re-read dead-letters the events without
    calling the gateway again, and commits — and a further abort decides the same way.
    (Seen on Kafka before T7: abort and re-read for ever, ~10 a second.)"""
    from streams.engine.errors import UnknownDestination

    h = Harness()
    await h.ready()
    h.publisher.reject[SENT] = UnknownDestination("TopicAuthorizationFailedError: " + SENT)
    assert await h.fetch({P0: paid(P0, 0, 2)}) == 0
    assert h.log.count(("abort", h.producer(P0).transactional_id)) == 1 and h.broker.committed_offsets == {}
    assert len(h.notifier.calls) == 3
    h.producer(P0).fail_commit = 1  # the re-read's transaction aborts too
    assert await h.fetch({P0: paid(P0, 0, 2)}) == 0
    assert await h.fetch({P0: paid(P0, 0, 2)}) == 3
    assert len(h.notifier.calls) == 3  # the handler did not run again for the refused events
    assert h.broker.committed_offsets == {P0: 3} and h.broker.texts(SENT) == []
    letters = [m for m in h.broker.visible if m.topic == "notifications.dlq"]
    assert sorted(m.key for m in letters) == [b"o-0-0", b"o-0-1", b"o-0-2"]
    assert all(dict(m.headers)["x-dlq-reason"] == b"non_retryable" for m in letters)


async def test_a_rebalance_during_the_batch_aborts_it() -> None:
    h = Harness()
    await h.ready()
    h.notifier.delay = 0.01
    task = asyncio.ensure_future(h.fetch({P0: paid(P0, 0, 2)}))
    await wait_until(lambda: h.notifier.calls)
    h.consumer.gen += 1  # a rebalance starts while the gateway calls run
    assert await task == 0
    assert ("abort", transactional_id(GROUP, P0)) in h.log
    assert h.broker.visible == [] and h.broker.committed_offsets == {} and h.markers(0) == set()


def test_doomed_raises_only_inside_a_transaction() -> None:
    from streams.engine.transactions import _CURRENT, Open

    assert doomed(ConnectionError("outside")) is None  # at-least-once: the caller sends again
    token = _CURRENT.set(Open(P0, FakeTxnProducer("t", Broker(), [])))
    try:
        with pytest.raises(TransactionDoomed):
            doomed(ConnectionError("inside"))
    finally:
        _CURRENT.reset(token)


async def test_deliver_inside_a_transaction_does_not_send_again() -> None:
    """At-least-once sends a failed record again; inside a transaction that would commit
    a transaction with a failed send in it, so deliver gives up and the batch aborts."""
    from streams.engine.delivery import deliver

    h = Harness()
    await h.ready()
    h.publisher.fail_acks = 1

    async def work() -> bool:
        await deliver(h.publisher, [Outgoing(SENT, b"k", b"v", (), 0)], allowed=lambda t: True, backoff=0.001)
        return True

    assert not await h.txns.run(P0, 1, work)
    assert len(h.publisher.sent) == 1 and h.txns.counts["aborted"] == 1


# -- T5 / T6: fenced → the partition stops; never retried as the old owner ------------------


async def test_a_fenced_owner_stops_the_partition_and_nothing_it_sent_becomes_visible() -> None:
    h = Harness()
    await h.ready()
    old = h.producer(P0)
    h.notifier.delay = 0.01
    task = asyncio.ensure_future(h.fetch({P0: paid(P0, 0, 2), P1: paid(P1, 0, 0)}))
    await wait_until(lambda: h.notifier.calls)
    # the new owner (another worker) starts its producer of the same id mid-batch
    new_owner = FakeTxnProducer(old.transactional_id, h.broker, [])
    await new_owner.start()
    await task
    assert h.stopped == [P0] and not h.txns.owns(P0) and old.closed
    assert [m for m in h.broker.visible if m.partition == 0] == []
    assert P0 not in h.broker.committed_offsets and h.markers(0) == set()
    # the old owner never re-initialises the id (that would fence the real owner)
    assert [e for e in h.log if e[0] == "start" and e[1] == old.transactional_id] == [
        ("start", old.transactional_id, 1)]
    # its records come again but are not processed: sought back and the partition paused
    h.consumer.seeks.clear()
    assert await h.fetch({P0: paid(P0, 0, 2)}) == 0
    assert h.consumer.seeks == [(P0, 0)] and P0 in h.consumer.paused
    # P1 goes on in its own transactions (its record of the fenced fetch went back: rule 2)
    assert h.txns.owns(P1)
    assert await h.fetch({P1: paid(P1, 0, 1)}) == 2
    assert h.broker.committed_offsets[P1] == 2


async def test_a_partition_assigned_again_after_a_fence_gets_a_new_producer() -> None:
    h = Harness()
    await h.ready()
    await FakeTxnProducer(transactional_id(GROUP, P0), h.broker, []).start()  # fenced while idle
    assert await h.fetch({P0: paid(P0, 0, 0)}) == 0
    assert h.stopped == [P0]
    h.consumer.gen += 1  # the rebalance it asked for gives it back
    h.driver.reset()
    await h.txns.revoke([P0, P1])
    await h.ready()
    assert h.txns.owns(P0)
    assert await h.fetch({P0: paid(P0, 0, 0)}) == 1
    assert h.broker.committed_offsets == {P0: 1}


async def test_a_transaction_that_timed_out_is_handled_as_fenced() -> None:
    h = Harness()
    await h.ready()
    h.broker.time_out.add(transactional_id(GROUP, P0))
    assert await h.fetch({P0: paid(P0, 0, 1)}) == 0
    assert h.stopped == [P0] and h.broker.visible == [] and h.markers(0) == set()


async def test_a_producer_that_cannot_abort_stops_the_partition() -> None:
    """aiokafka #1004 / #1098 end with the sender dead: no abort, no commit possible.
    The partition stops (T5) instead of a loop of failing batches."""
    h = Harness()
    await h.ready()
    p0 = h.producer(P0)
    p0.fail_commit = 1
    p0.dead = None

    async def dead_abort() -> None:
        h.log.append(("abort", p0.transactional_id))
        raise ProducerDead("sender stopped: KafkaError('Unexpected error during batch delivery')")

    p0.abort = dead_abort  # type: ignore[method-assign]
    assert await h.fetch({P0: paid(P0, 0, 0)}) == 0
    assert h.stopped == [P0] and p0.closed and not h.txns.owns(P0)


async def test_a_producer_that_fails_to_start_is_not_kept() -> None:
    h = Harness()

    async def refuse() -> None:
        raise ConnectionError("no coordinator")

    def make(tid: str) -> FakeTxnProducer:
        p = FakeTxnProducer(tid, h.broker, h.log)
        if tid.endswith("-1"):
            p.start = refuse  # type: ignore[method-assign]
        return p

    h.txns.make = make
    with pytest.raises(ConnectionError):
        await h.txns.assign([P0, P1])
    assert h.txns.owns(P0) and not h.txns.owns(P1)


# -- maintenance (TTL expiry, park timeouts) in transactions too ----------------------------


class Maintaining:
    """A pipeline whose maintenance sends a record and writes state, as expiry does."""

    def __init__(self, publisher: TxnPublisher, store: MemoryStore) -> None:
        from streams.engine.topology import ServiceSpec

        self.spec = ServiceSpec("svc", sources=(PAID_TOPIC,), tables=())
        self.policy = RetryPolicy(DELAYS)
        self.publisher, self.store = publisher, store

    async def maintain(self, partitions: Sequence[int], *, still_owner: Any = lambda: True) -> int:
        from streams.engine.delivery import deliver
        from streams.engine.ports import BatchState

        state = BatchState(self.store)
        for p in partitions:
            await deliver(self.publisher, [Outgoing(SENT, b"expired-%d" % p, b"{}", (), p)], allowed=lambda t: True)
            state.tx("svc-table", p).set(b"swept", b"1")
        await state.flush()
        return len(partitions)


async def test_maintenance_runs_in_a_transaction_of_an_owned_partition() -> None:
    h = Harness()
    m = Maintaining(h.publisher, h.store)
    h.driver = Driver([m], batch_size=500, clock=Clock(NOW), transactions=h.txns,  # type: ignore[list-item]
                      maintenance_interval=0.0)
    await h.ready()
    p0 = h.producer(P0)
    p0.fail_commit = 1  # the first maintenance transaction of partition 0 fails to commit
    await h.driver.tick(h.consumer)
    assert h.broker.texts(SENT) == [b"expired-1"]  # partition 1's committed; partition 0's aborted
    assert h.store.table("svc-table", 0) == {} and h.store.table("svc-table", 1) == {b"swept": b"1"}
    assert h.broker.committed_offsets == {}  # maintenance commits no input offsets
    await h.driver.tick(h.consumer)
    assert sorted(h.broker.texts(SENT)) == [b"expired-0", b"expired-1", b"expired-1"]
    assert h.store.table("svc-table", 0) == {b"swept": b"1"}


# -- rule 2 under exactly-once: the marker after each transaction is not news ---------------


async def test_a_marker_gap_is_logged_at_debug_and_a_larger_gap_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Every transaction read leaves one offset (its commit marker) that no fetch
    returns: an INFO line per transaction was noise. A gap of one or two offsets is
    logged at DEBUG; a larger one (compaction, retention, an aborted batch) at INFO."""
    import logging

    h = Harness()
    await h.ready()
    caplog.set_level(logging.DEBUG, logger="streams.engine.position")

    def gaps() -> list[tuple[int, str]]:
        return [(r.levelno, r.getMessage()) for r in caplog.records if "are not in the log" in r.getMessage()]

    assert await h.fetch({P0: paid(P0, 0, 2)}) == 3
    # offset 3 is the commit marker: sought back once (rule 2), then accepted
    for _ in range(2):
        await h.fetch({P0: paid(P0, 4, 5)})
    assert gaps() == [(logging.DEBUG, f"{PAID_TOPIC}[0]: offsets 3..3 are not in the log; continuing at 4")]
    caplog.clear()
    # an aborted record and its marker: two offsets, still DEBUG
    for _ in range(2):
        await h.fetch({P0: paid(P0, 8, 8)})
    assert gaps() == [(logging.DEBUG, f"{PAID_TOPIC}[0]: offsets 6..7 are not in the log; continuing at 8")]
    caplog.clear()
    # three offsets and more are not a marker: INFO, as before
    for _ in range(2):
        await h.fetch({P0: paid(P0, 12, 12)})
    assert gaps() == [(logging.INFO, f"{PAID_TOPIC}[0]: offsets 9..11 are not in the log; continuing at 12")]
    assert h.broker.committed_offsets == {P0: 13}


# -- T6: the transaction timeout is a setting ----------------------------------------------


@pytest.mark.parametrize("value", ["999", "900001", "2s"])
def test_transaction_timeout_ms_out_of_range_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """Below 1 s every batch would time out; above 15 min the broker refuses the
    producers (its default transaction.max.timeout.ms)."""
    from streams.settings import SettingsError, load_settings

    monkeypatch.setenv("TRANSACTION_TIMEOUT_MS", value)
    with pytest.raises(SettingsError):
        load_settings()
    assert "TRANSACTION_TIMEOUT_MS" in capsys.readouterr().err


async def test_transaction_timeout_ms_reaches_every_partitions_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from streams.faust.transactions import make_transactions
    from streams.settings import load_settings

    monkeypatch.delenv("TRANSACTION_TIMEOUT_MS", raising=False)
    assert load_settings().transaction_timeout_ms == 60_000
    monkeypatch.setenv("TRANSACTION_TIMEOUT_MS", "2500")
    settings = load_settings()
    app = SimpleNamespace(conf=SimpleNamespace(id=GROUP), consumer=None,
                          on_before_shutdown=SimpleNamespace(connect=lambda f: f))
    txns = make_transactions(app, bootstrap="127.0.0.1:9", client_kwargs={}, max_request_size=1 << 20,
                             transaction_timeout_ms=settings.transaction_timeout_ms)
    producer = txns.make(transactional_id(GROUP, P0))
    assert producer.client._txn_manager.transaction_timeout_ms == 2500  # never started: no broker needed
