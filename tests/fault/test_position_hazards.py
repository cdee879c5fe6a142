"""The consumer-position hazards, caused on purpose against the real worker
(streams/engine/position.py, rules 1–5): a fetch delivered before the seek to
committed offsets, a second worker joining mid-fetch, and one key on a retry tier and
the main topic at once."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderPaid
from streams.engine.keys import key_partition
from harness.events import paid
from harness.gateway import GatewayStub, always
from harness.kafka import committed, produce, read_topic, wait_consumed
from harness.worker import http_get, metric_value

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


async def test_a_fetch_delivered_before_the_seek_is_processed_exactly_once(broker, worker_factory):
    """Rule 1, regression for the 487 events lost in one chaos run: records fetched
    after table recovery but before the seek to committed offsets must not be skipped
    — on a first start (nothing committed) and on a restart (committed offsets)."""
    await produce(broker.bootstrap, PAID, [paid(f"a-{i}") for i in range(3000)])
    worker = worker_factory("w1", app="tests.support.hazard_app", services="notifications")
    await asyncio.to_thread(worker.start().wait_ready)
    await wait_consumed(broker.bootstrap, [PAID])
    await asyncio.to_thread(worker.stop)
    await produce(broker.bootstrap, PAID, [paid(f"b-{i}") for i in range(3000)])  # while it is down
    shutil.rmtree(worker.data_dir)  # Faust replays the dedup changelog: its fetcher runs into the seek
    await asyncio.to_thread(worker.start().wait_ready)
    await wait_consumed(broker.bootstrap, [PAID])

    log = worker.log_path.read_text(errors="replace").split("===== start 2")[-1]
    holds = [line for line in log.splitlines() if "hazard: seek to committed offsets after" in line]
    assert holds and "after 0 not-ready" not in holds[0], holds  # the hazard happened
    sent = Counter(r.key for r in await read_topic(broker.bootstrap, SENT, expect=6000))
    assert len(sent) == 6000, f"lost {6000 - len(sent)}"
    assert set(sent.values()) == {1}
    assert sum((await committed(broker.bootstrap, PAID)).values()) == 6000
    text = await asyncio.to_thread(worker.metrics)
    assert metric_value(text, "engine_seek_backs_total", reason="not_ready") >= 1


def assigned(worker, topic: str) -> set[int]:
    try:
        code, body = http_get(f"{worker.url}/health", timeout=2)
    except OSError:
        return set()
    return {int(a.rsplit(":", 1)[1]) for a in json.loads(body).get("assigned", []) if a.startswith(topic + ":")} \
        if code == 200 else set()


async def test_a_second_worker_joining_mid_fetch_loses_nothing_and_the_old_owner_stops_at_the_boundary(
        broker, worker_factory):
    """Rule 3: after a rebalance nothing of a revoked partition is handled by the old
    owner once the new owner has started on it; 0 lost; duplicates ≤ one batch."""
    gateway = await GatewayStub(always(200), delay=0.02).start()
    try:
        env = dict(services="notifications", notifier_url=gateway.url, handler_concurrency="8", batch_size="100")
        w1, w2 = worker_factory("w1", **env), worker_factory("w2", **env)
        await asyncio.to_thread(w1.start().wait_ready)
        ids = [f"o-{i}" for i in range(4000)]
        await produce(broker.bootstrap, PAID, [paid(i) for i in ids])
        deadline = time.monotonic() + 120
        while len(gateway.requests) < 500:  # w1 is mid-backlog (one fetch holds most of it)
            assert time.monotonic() < deadline, f"w1 made {len(gateway.requests)} of 500 calls in 120 s"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(w2.start().wait_ready)
        await wait_consumed(broker.bootstrap, [PAID], timeout=300)
    finally:
        await gateway.stop()

    sent = Counter(r.key for r in await read_topic(broker.bootstrap, SENT, expect=len(ids)))
    assert len(sent) == len(ids), f"lost {len(ids) - len(sent)}"
    calls_per_partition: dict[int, list[str]] = {}
    for key, agent, _ in gateway.agents:
        calls_per_partition.setdefault(key_partition(key.encode(), 4), []).append(agent)
    interleaved = {}
    for partition, agents in calls_per_partition.items():
        # once a second worker has called for a partition, the first makes no further calls for it
        first_other = next((i for i, a in enumerate(agents) if a != agents[0]), None)
        if first_other is not None and agents[0] in agents[first_other:]:
            interleaved[partition] = agents[first_other:].count(agents[0])
    assert not interleaved, f"old owner kept calling after the new one started: {interleaved}"
    repeated = sum(n - 1 for n in gateway.requests.values())
    moved = sorted(p for p, a in calls_per_partition.items() if len(set(a)) > 1)
    print(f"\nsecond worker mid-fetch: {len(ids)} orders, lost 0, repeated gateway calls {repeated}, "
          f"partitions that changed hands {moved}")
    # Without a handover the boundary check above holds vacuously: w2 must have taken
    # over some partition from w1 mid-backlog (both made calls for it, w1 first).
    callers = {p: sorted(set(a)) for p, a in calls_per_partition.items()}
    assert moved, f"no partition changed hands: callers per partition {callers}"
    w1_agent = gateway.agents[0][1]  # w2 started after w1's 500th call
    assert all(calls_per_partition[p][0] == w1_agent for p in moved), (w1_agent, moved)
    assert repeated <= 100  # at most the batch in flight at the rebalance (BATCH_SIZE=100)


async def test_one_key_on_a_retry_tier_and_the_main_topic_makes_one_successful_call_never_two_at_once(
        broker, worker_factory):
    """Rule 5: a retry record of a key and a fresh copy of it on the main topic are
    never in flight in two pipelines at once: the gateway never sees the key twice
    concurrently, and only one call succeeds."""
    failed_once: set[str] = set()

    def behaviour(key: str, seen: int) -> int:
        if key not in failed_once:
            failed_once.add(key)
            return 503
        return 200

    gateway = await GatewayStub(behaviour, delay=0.05).start()
    try:
        worker = worker_factory("w1", services="notifications", notifier_url=gateway.url, retry_delays="0")
        await asyncio.to_thread(worker.start().wait_ready)
        ids = [f"o-{i}" for i in range(200)]
        await produce(broker.bootstrap, PAID, [paid(i) for i in ids])
        await produce(broker.bootstrap, PAID, [paid(i) for i in ids])  # duplicates while the retries run
        await wait_consumed(broker.bootstrap, [PAID, "notifications.retry.1"])
    finally:
        await gateway.stop()
    assert gateway.overlapping == set(), f"{len(gateway.overlapping)} keys called twice at once"
    assert all(gateway.accepted[i] == 1 for i in ids), [i for i in ids if gateway.accepted[i] != 1][:5]
    sent = Counter(r.key for r in await read_topic(broker.bootstrap, SENT, expect=len(ids)))
    assert set(sent.values()) == {1} and len(sent) == len(ids)
