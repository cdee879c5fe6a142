"""PROCESSING_GUARANTEE=exactly_once on Apache Kafka (issue 20): the failure modes of
streams/engine/transactions.py caused on a real broker — a SIGKILL inside a transaction
(T1), a zombie resumed after its takeover (T5), a rebalance mid-batch (T4) and a batch
that outlives the transaction timeout (T6) — each leaves a ``read_committed`` consumer
with each derived event exactly once.

Under at-least-once the same kills repeat up to a batch of NotificationSent per kill
(tests/fault/test_worker_sigkill.py allows kills × BATCH_SIZE); here the batch that a
kill interrupts is an open transaction, aborted when the next life's producer of the
same transactional id starts (streams/engine/transactions.py, T1), so its records are
never visible to ``read_committed`` readers, and the committed offset is the one of the
last committed transaction. The SMS gateway stays at-least-once (idempotency key).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from harness.events import paid
from harness.gateway import GatewayStub
from harness.kafka import _partitions, committed, produce, wait_consumed
from harness.worker import http_get
from streams.events import NotificationSent, OrderPaid

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()
CHANGELOG = "order-streams-notifications-dedup-changelog"
ORDERS = 2_000
KILLS = 1


async def read_all(bootstrap: str, topic: str, isolation_level: str, timeout: float = 30.0) -> list[bytes]:
    """Every record key of ``topic`` up to its end (its last stable offset for
    ``read_committed``) as that reader sees it."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=isolation_level,
                                fetch_max_wait_ms=100)
    await consumer.start()
    keys: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while not consumer.assignment():
            assert time.monotonic() < deadline, f"no partitions of {topic}"
            await asyncio.sleep(0.05)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout} s"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                keys += [r.key for r in records]
    finally:
        await consumer.stop()
    return keys


async def freeze_inside_a_transaction(worker: Any, bootstrap: str, topics: list[str], timeout: float) -> bool:
    """Leave ``worker`` frozen (SIGSTOP) while a batch's transaction has sent records and
    not committed.

    Seen from outside: a topic's end for a ``read_uncommitted`` reader is past its end
    for a ``read_committed`` one. That is also true for a moment after a commit (until
    the broker writes the commit markers), so the worker is frozen first: a transaction
    it committed gets its markers without it, an open one stays open. Still open a
    second later → True (the worker stays frozen); else SIGCONT and look again. False:
    not seen in ``timeout`` s."""
    readers = [AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=level, enable_auto_commit=False)
               for level in ("read_committed", "read_uncommitted")]
    for r in readers:
        await r.start()

    async def open_transaction(tps: list[Any]) -> bool:
        stable, high = [await r.end_offsets(tps) for r in readers]
        return any(high[tp] > stable[tp] for tp in tps)

    try:
        tps = [tp for t in topics for tp in await _partitions(readers[0], t, time.monotonic() + 10)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await open_transaction(tps):
                continue
            os.killpg(worker.proc.pid, signal.SIGSTOP)
            frozen_until = time.monotonic() + 1.0
            while await open_transaction(tps) and time.monotonic() < frozen_until:
                await asyncio.sleep(0.02)
            if time.monotonic() >= frozen_until:  # open all along, its producer frozen
                return True
            os.killpg(worker.proc.pid, signal.SIGCONT)
        return False
    finally:
        for r in readers:
            await r.stop()


async def kill_inside_a_transaction(worker: Any, bootstrap: str, topics: list[str], timeout: float) -> bool:
    """SIGKILL ``worker`` while a batch's transaction has sent records and not committed
    (:func:`freeze_inside_a_transaction`); False: not seen in ``timeout`` s."""
    if await freeze_inside_a_transaction(worker, bootstrap, topics, timeout):
        worker.kill()
        return True
    return False


async def test_sigkill_mid_stream_under_exactly_once_leaves_each_derived_event_once(kafka, kafka_worker_factory):
    rng = random.Random(20)
    gateway = await GatewayStub(delay=0.002).start()
    try:
        worker = kafka_worker_factory(notifier_url=gateway.url, services="notifications",
                                      processing_guarantee="exactly_once", batch_size="200")
        await asyncio.to_thread(worker.start().wait_ready)
        ids = [f"o-{i}" for i in range(ORDERS)]
        parts = [ids[k * ORDERS // (KILLS + 1):(k + 1) * ORDERS // (KILLS + 1)] for k in range(KILLS + 1)]

        async def feed(part: list[str]) -> None:
            for start in range(0, len(part), 100):
                await produce(kafka.bootstrap, PAID, [paid(i) for i in part[start:start + 100]])
                await asyncio.sleep(0.3)  # paces production so each kill lands mid-stream

        feeders = [asyncio.create_task(feed(parts[0]))]
        done: list[int] = []
        for k in range(KILLS):
            deadline = time.monotonic() + 60
            before = done[-1] if done else 0
            while sum((await committed(kafka.bootstrap, PAID)).values()) <= before:
                assert time.monotonic() < deadline, f"life {k + 1} committed nothing in 60 s:\n{worker.tail()}"
                await asyncio.sleep(0.05)
            # the kill lands inside a transaction that has sent records (the hazard);
            # inside one that is open at all, else
            if not await kill_inside_a_transaction(worker, kafka.bootstrap, [SENT, CHANGELOG], timeout=20):
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                worker.kill()
            assert worker.proc is not None and worker.proc.returncode == -signal.SIGKILL
            done.append(sum((await committed(kafka.bootstrap, PAID)).values()))
            feeders.append(asyncio.create_task(feed(parts[k + 1])))
            await asyncio.to_thread(worker.start().wait_ready)
        await asyncio.gather(*feeders)
        await wait_consumed(kafka.bootstrap, [PAID], timeout=120)

        committed_view = Counter(await read_all(kafka.bootstrap, SENT, "read_committed"))
        everything = Counter(await read_all(kafka.bootstrap, SENT, "read_uncommitted"))
        print(f"\nexactly_once, SIGKILL x{KILLS} over {ORDERS} OrderPaid: committed offsets after each kill {done}; "
              f"read_committed {sum(committed_view.values())} NotificationSent for {len(committed_view)} orders; "
              f"read_uncommitted {sum(everything.values())} (aborted records included); "
              f"gateway calls {len(gateway.requests)}")
        assert done[-1] < ORDERS, f"the worker had finished before the last kill: {done}"
        assert set(committed_view) == {i.encode() for i in ids}, "lost or foreign orders"
        assert [k for k, n in committed_view.items() if n != 1] == [], "a derived event repeated"
        # the hazard was caused: a kill left records of an open transaction behind
        assert sum(everything.values()) > sum(committed_view.values()), "no kill landed inside a transaction"
    finally:
        await gateway.stop()


async def test_a_zombie_resumed_after_its_takeover_commits_nothing(kafka, kafka_worker_factory):
    """Worker A frozen (SIGSTOP) inside a transaction past its session timeout; worker B
    takes over and processes; A resumed (SIGCONT): nothing A sent is ever visible to a
    read_committed reader (B's producer start aborted A's transaction and fenced A), A
    stops those partitions, and every order's NotificationSent is there once."""
    gateway = await GatewayStub(delay=0.002).start()
    try:
        env = {"notifier_url": gateway.url, "services": "notifications", "processing_guarantee": "exactly_once",
               "batch_size": "100"}
        a, b = kafka_worker_factory("a", **env), kafka_worker_factory("b", **env)
        await asyncio.to_thread(a.start().wait_ready)
        await asyncio.to_thread(b.start().wait_ready)
        ids = [f"o-{i}" for i in range(6_000)]
        stop_feeding = asyncio.Event()

        async def feed() -> None:
            for start in range(0, len(ids), 50):
                await produce(kafka.bootstrap, PAID, [paid(i) for i in ids[start:start + 50]])
                if not stop_feeding.is_set():
                    await asyncio.sleep(0.1)

        feeder = asyncio.create_task(feed())
        assert await freeze_inside_a_transaction(a, kafka.bootstrap, [SENT, CHANGELOG], timeout=60), \
            "worker A never had an open transaction with records in it"
        # B alone in the group (A's session expired): every partition is B's, and B commits
        deadline = time.monotonic() + 60
        while "engine ready: 16 partitions" not in b.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"B did not take over:\n{b.tail()}"
            await asyncio.sleep(0.1)
        before = sum((await committed(kafka.bootstrap, PAID)).values())
        while sum((await committed(kafka.bootstrap, PAID)).values()) <= before:
            assert time.monotonic() < deadline, f"B committed nothing after taking over:\n{b.tail()}"
            await asyncio.sleep(0.1)
        os.killpg(a.proc.pid, signal.SIGCONT)  # the zombie wakes up mid-transaction
        stop_feeding.set()
        await feeder
        await wait_consumed(kafka.bootstrap, [PAID], timeout=120)
        committed_view = Counter(await read_all(kafka.bootstrap, SENT, "read_committed"))
        everything = Counter(await read_all(kafka.bootstrap, SENT, "read_uncommitted"))
        print(f"\nzombie: read_committed {sum(committed_view.values())} NotificationSent for {len(committed_view)} "
              f"orders; read_uncommitted {sum(everything.values())}; gateway calls {len(gateway.requests)}")
        assert set(committed_view) == {i.encode() for i in ids}, "lost or foreign orders"
        assert [k for k, n in committed_view.items() if n != 1] == [], "a derived event repeated"
        assert sum(everything.values()) > sum(committed_view.values()), "A's transaction left nothing behind"
        # A learnt it was fenced and stopped those partitions (then rejoined the group)
        deadline = time.monotonic() + 30
        while "fenced by a newer owner" not in a.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"A never saw it was fenced:\n{a.tail()}"
            await asyncio.sleep(0.1)
    finally:
        await gateway.stop()


def _lines(worker: Any, text: str) -> list[str]:
    return [line for line in worker.log_path.read_text(errors="replace").splitlines() if text in line]


class HeldGateway(GatewayStub):
    """The SMS gateway stub; its requests wait while :attr:`gate` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        #: requests waiting at the gate now
        self.held = 0

    async def _handle(self, request: Any) -> Any:
        self.held += 1
        try:
            await self.gate.wait()
        finally:
            self.held -= 1
        return await super()._handle(request)


async def rebalancing(worker: Any) -> bool:
    """Whether ``worker``'s /health says a rebalance has started there."""
    _, body = await asyncio.to_thread(http_get, f"{worker.url}/health", 2)
    return bool(json.loads(body).get("rebalancing"))


async def test_a_rebalance_mid_batch_aborts_the_batch_and_each_event_is_committed_once(kafka, kafka_worker_factory):
    """T4 on Kafka: worker B joins the group while worker A is inside a batch. A's batch
    is held at the SMS gateway until A's /health says its rebalance started (A cannot
    rejoin before its batch ends, so B cannot have fenced it yet); released, the batch
    sends its records into its transaction, finds its partitions changed hands
    (Superseded) and aborts instead of committing. A read_committed reader sees each
    NotificationSent exactly once; the aborted records are in the log, visible only to
    read_uncommitted."""
    gateway = await HeldGateway().start()
    try:
        # the held gateway calls must not time out (they would go to a retry tier)
        env = {"notifier_url": gateway.url, "services": "notifications", "processing_guarantee": "exactly_once",
               "batch_size": "50", "notifier_timeout": "60"}
        a, b = kafka_worker_factory("a", **env), kafka_worker_factory("b", **env)
        await asyncio.to_thread(a.start().wait_ready)
        ids = [f"o-{i}" for i in range(200)]
        await produce(kafka.bootstrap, PAID, [paid(i) for i in ids[:100]])
        await wait_consumed(kafka.bootstrap, [PAID], timeout=60)
        gateway.gate.clear()
        await produce(kafka.bootstrap, PAID, [paid(i) for i in ids[100:]])
        deadline = time.monotonic() + 60
        while not gateway.held:  # A is inside a batch, waiting on the gateway
            assert time.monotonic() < deadline, f"A started no batch:\n{a.tail()}"
            await asyncio.sleep(0.05)
        b.start()  # B joins: the group rebalances
        while not await rebalancing(a):
            assert time.monotonic() < deadline, f"A saw no rebalance:\n{a.tail()}\nB:\n{b.tail()}"
            await asyncio.sleep(0.05)
        gateway.gate.set()
        await asyncio.to_thread(b.wait_ready)
        await wait_consumed(kafka.bootstrap, [PAID], timeout=120)
        committed_view = Counter(await read_all(kafka.bootstrap, SENT, "read_committed"))
        everything = Counter(await read_all(kafka.bootstrap, SENT, "read_uncommitted"))
        print(f"\nrebalance mid-batch: {len(ids)} orders; read_committed {sum(committed_view.values())} "
              f"NotificationSent for {len(committed_view)} orders; read_uncommitted {sum(everything.values())}; "
              f"gateway calls {sum(gateway.requests.values())}; A: {_lines(a, 'transaction aborted')[:3]}")
        # the hazard was caused: A's batch ran on past the start of the rebalance
        assert _lines(a, "partitions changed hands during a batch"), a.tail()
        assert set(committed_view) == {i.encode() for i in ids}, "lost or foreign orders"
        assert [k for k, n in committed_view.items() if n != 1] == [], "a derived event repeated"
        # the caught batch had sent its records inside its transaction, and aborted it
        assert _lines(a, "transaction aborted (the batch did not finish (rebalance))"), a.tail()
        assert sum(everything.values()) > sum(committed_view.values()), "the aborted batch left no records"
        assert b.proc is not None and b.proc.poll() is None and a.proc is not None and a.proc.poll() is None
    finally:
        await gateway.stop()


async def test_a_batch_that_outlives_the_transaction_timeout_is_aborted_and_read_again_once(
        kafka, kafka_worker_factory):
    """T6 on Kafka: TRANSACTION_TIMEOUT_MS=2000, and a batch held open past it.
    order-state and notifications both read OrderPaid, so they share each batch:
    order-state's changelog records open the transaction on the broker while
    notifications' SMS gateway calls are held. The gateway lets them go only once the
    broker has closed that transaction by itself (a read_committed reader's end of the
    changelog caught up with the log's end while the batch still waited: the worker
    cannot commit then, so the broker aborted it — the test's Kafka looks every second).
    The worker's next step of that transaction fails as fenced; it stops the partition
    and rejoins (T5); read again, each NotificationSent is visible once to
    read_committed, the aborted changelog records only to read_uncommitted."""
    changelog = "order-streams-order-state-changelog"
    gateway = await HeldGateway().start()
    gateway.gate.clear()
    readers = [AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, isolation_level=level, enable_auto_commit=False)
               for level in ("read_committed", "read_uncommitted")]
    try:
        worker = kafka_worker_factory(notifier_url=gateway.url, services="notifications,order-state",
                                      processing_guarantee="exactly_once", transaction_timeout_ms="2000",
                                      notifier_timeout="60")
        await asyncio.to_thread(worker.start().wait_ready)
        for r in readers:
            await r.start()
        tps = await _partitions(readers[0], changelog, time.monotonic() + 10)

        async def open_transaction() -> bool:
            stable, high = [await r.end_offsets(tps) for r in readers]
            return any(high[tp] > stable[tp] for tp in tps)

        ids = [f"o-{i}" for i in range(40)]
        await produce(kafka.bootstrap, PAID, [paid(i) for i in ids])
        deadline = time.monotonic() + 60
        while not (gateway.held and await open_transaction()):
            assert time.monotonic() < deadline, f"no batch opened a transaction:\n{worker.tail()}"
            await asyncio.sleep(0.05)
        while await open_transaction():  # the batch is held: only the broker can end it
            assert time.monotonic() < deadline, f"the broker did not abort the transaction:\n{worker.tail()}"
            await asyncio.sleep(0.05)
        assert gateway.held, "the batch was let go before the broker aborted its transaction"
        gateway.gate.set()
        while not (stopped := _lines(worker, "the partition stops here until the group assigns it again")):
            assert time.monotonic() < deadline, f"the worker did not see the timeout:\n{worker.tail()}"
            await asyncio.sleep(0.1)
        await wait_consumed(kafka.bootstrap, [PAID], timeout=120)
        committed_view = Counter(await read_all(kafka.bootstrap, SENT, "read_committed"))
        state_committed = await read_all(kafka.bootstrap, changelog, "read_committed")
        state_everything = await read_all(kafka.bootstrap, changelog, "read_uncommitted")
        print(f"\ntransaction timeout: {stopped[0]}\nread_committed {sum(committed_view.values())} NotificationSent "
              f"for {len(committed_view)} orders; order-state changelog: read_committed {len(state_committed)}, "
              f"read_uncommitted {len(state_everything)}; gateway calls {sum(gateway.requests.values())}")
        assert set(committed_view) == {i.encode() for i in ids}, "lost or foreign orders"
        assert [k for k, n in committed_view.items() if n != 1] == [], "a derived event repeated"
        assert len(state_everything) > len(state_committed), "no transaction with records was aborted"
        # the worker saw it as T5 (one worker: no newer owner exists to have fenced it)
        assert "fenced by a newer owner or a transaction timeout" in stopped[0] \
            or "its transactional producer cannot go on" in stopped[0], stopped[0]
        # it rejoined: the stopped partition was assigned again and its records processed
        assert worker.log_path.read_text(errors="replace").split(stopped[0], 1)[1].count("engine ready") >= 1
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        for r in readers:
            await r.stop()
        await gateway.stop()
