"""SIGKILL the worker mid-run: 0 lost, duplicates within kills × BATCH_SIZE (issue 2)."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter

import pytest

from bench.chaos import batch_size_of
from streams.events import NotificationSent, OrderPaid
from harness.events import paid
from harness.kafka import committed, produce, read_topic, wait_consumed

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()
KILLS = 3


async def test_issue2_worker_sigkilled_3_times_during_10000_events_loses_nothing(broker, worker_factory):
    rng = random.Random(2)
    ids = [f"o-{i}" for i in range(10_000)]
    worker = worker_factory("w1")
    await asyncio.to_thread(worker.start().wait_ready)

    async def feed(part: list[str]) -> None:
        for start in range(0, len(part), 100):
            await produce(broker.bootstrap, PAID, [paid(i) for i in part[start:start + 100]])
            # paces production (a part over ~12 s, longer than a worker's restart, so
            # each life is killed while its part is still arriving), not a wait for quiet
            await asyncio.sleep(0.5)

    # Production in KILLS + 1 parts, each started only after the previous kill: every kill
    # comes with work left however fast a worker (re)starts (with production paced over
    # a fixed 20 s, one faster start let a life finish everything before the last kill).
    size = len(ids) // (KILLS + 1)
    parts = [ids[k * size:(k + 1) * size] for k in range(KILLS)] + [ids[KILLS * size:]]
    feeders = [asyncio.create_task(feed(parts[0]))]

    async def progress_since(before: int, timeout: float = 60.0) -> int:
        """The group's committed OrderPaid once this worker life has committed beyond
        ``before``: each life is killed only after it has done some work of its own."""
        deadline = time.monotonic() + timeout
        while (now := sum((await committed(broker.bootstrap, PAID)).values())) <= before:
            assert time.monotonic() < deadline, f"worker life {len(commits) + 1} committed nothing in {timeout} s"
            await asyncio.sleep(0.1)
        return now

    #: the group's committed OrderPaid after each kill: all the killed life committed
    commits: list[int] = []
    for _ in range(KILLS):
        await progress_since(commits[-1] if commits else 0)  # this life did work of its own
        await asyncio.sleep(rng.uniform(0.0, 0.5))  # when to kill: within its next batches
        worker.kill()
        assert worker.proc is not None and worker.proc.returncode == -signal.SIGKILL  # a live worker, killed
        commits.append(sum((await committed(broker.bootstrap, PAID)).values()))
        feeders.append(asyncio.create_task(feed(parts[len(commits)])))
        await asyncio.to_thread(worker.start().wait_ready)
    await asyncio.gather(*feeders)

    # Once the group has committed every OrderPaid, every NotificationSent derived from
    # them — duplicates too — is in the broker (acks before the offset commit).
    await wait_consumed(broker.bootstrap, [PAID], timeout=180)
    sent = await read_topic(broker.bootstrap, SENT, expect=len(ids), timeout=60)
    wanted = {i.encode() for i in ids}
    per_order = Counter(r.key for r in sent)
    lost = wanted - set(per_order)
    duplicates = sum(per_order.values()) - len(per_order)
    budget = KILLS * batch_size_of(worker)
    print(f"\nSIGKILL x{KILLS} over 10,000 OrderPaid: produced={len(ids)} notified={len(per_order)} "
          f"lost={len(lost)} duplicate NotificationSent={duplicates} (budget {KILLS} kills × BATCH_SIZE = "
          f"{budget}) worker starts={worker.starts}; committed OrderPaid after each kill: {commits}")
    # The worker's own output: each of its lives got as far as serving its web endpoints.
    lives = worker.log_path.read_text(errors="replace").count("worker web server on ")
    assert lives == KILLS + 1, f"{lives} worker lives in {worker.log_path}"
    # Every kill came with work left: the last one before the group had committed everything.
    assert commits[-1] < len(ids), f"the worker had finished before the last kill: {commits}"
    assert not lost, f"lost {len(lost)} orders, e.g. {sorted(lost)[:5]}"
    assert set(per_order) == wanted  # nothing the test did not produce
    assert duplicates <= budget, f"{duplicates} duplicate NotificationSent over {KILLS} kills × BATCH_SIZE"
