"""The measurements. Each returns a dict of numbers; ``bench/__main__.py`` pairs them,
repeats them and reports them.

Method, worker side: every input is produced (``acks="all"``) to a fresh embedded
broker before the worker starts; the clock starts when the worker's ``/health``
first answers 200 (polled every 50 ms) and stops at the first ``/metrics`` poll
(spaced by half the estimated time left, 50 ms to 0.5 s: a scrape costs the worker
CPU) whose ``event_processed_total`` counts say every service that reads
the inputs processed all of them (a condition, never a quiet period). CPU is the
worker process's user + system time over the same span.

Bare side: ``bench.bare_loop`` (consume 500 → json → rocksdict dedup → produce
``acks="all"`` → await acks → write batch → commit) on its own fresh broker, over
the OrderPaid flood; its clock runs from its first fetched record to the last
batch's acks and commit, once it has consumed every record.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.profile import Sampler
from bench.common import (
    ROOT, create_topics, distinct_paid, fresh_broker, lifecycle_inputs, measured, order_paid_inputs, process_cpu_seconds,
    processed, produce_all, wait_metrics,
)
from streams.events import InventoryRejected, InventoryReserved, NotificationSent, OrderCreated, OrderPaid
from streams.faust.compat import aiokafka_records, fetch_high_watermarks
from streams.registry import INVENTORY_REQUESTS
from harness.gateway import GatewayStub
from harness.kafka import read_topic
from harness.worker import WorkerProcess, metric_value

PAID, SENT, CREATED = OrderPaid.topic(), NotificationSent.topic(), OrderCreated.topic()
DEFAULT_SERVICES = "notifications,order-state,inventory"
DEDUP_CHANGELOG = "order-streams-notifications-dedup-changelog"
OS_DLQ = "order-state.dlq"


def _per_100k(cpu: float, events: int) -> float:
    return cpu * 100_000 / events if events else 0.0


def counts_of(text: str) -> dict[str, float]:
    """The worker's outcome counters (event_processed / dead_letter / seek backs /
    publish failures), for the record."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("event_processed_total", "dead_letter_total", "engine_seek_backs_total",
                            "publish_failures_total", "dedup_keys_expired_total", "retry_scheduled_total")):
            head, _, value = line.rpartition(" ")
            if float(value):
                out[head] = float(value)
    return out


# -- bare loop -------------------------------------------------------------------------

async def bare(n: int, distinct: int) -> dict[str, Any]:
    """The bare aiokafka loop over ``n`` OrderPaid (``distinct`` ids) on a fresh broker."""
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, "bare.sink"])
        await produce_all(broker.bootstrap, PAID, order_paid_inputs(n, distinct))
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bench.bare_loop", "--bootstrap", broker.bootstrap, "--source", PAID,
             "--sink", "bare.sink", "--expect-distinct", str(distinct), "--expect-events", str(n)],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"bare loop failed: {(out.stderr or out.stdout)[-1500:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r.get("timed_out"):
        raise RuntimeError(f"bare loop timed out: {r}")
    return {"events": n, "distinct": distinct, "forwarded": r["forwarded"], "seconds": r["seconds"],
            "events_per_s": n / r["seconds"], "cpu_s_per_100k": _per_100k(r["cpu_seconds"], n)}


# -- the worker, generic -----------------------------------------------------------------

After = Callable[[Any, WorkerProcess, float, float], Awaitable[dict[str, Any]]]


async def worker_run(
    name: str, workdir: Path, *, services: str, inputs: list[tuple[str, Iterable[tuple[bytes, bytes]]]],
    done: Callable[[str], float], units: int, timeout: float, env: dict[str, str] | None = None,
    after: After | None = None, profile: bool = False,
) -> dict[str, Any]:
    """Inputs produced, the worker started, timed until ``done(metrics)``; ``after``
    runs on the still-running worker (its numbers are merged in); ``profile``: py-spy
    samples the worker over the same span (bench.profile), in ``result["profile"]``."""
    wd = workdir / f"{name}-{time.strftime('%H%M%S')}-{time.perf_counter_ns() % 10**6}"
    wd.mkdir(parents=True)
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, sorted({t for t, _ in inputs}))
        produced = 0
        for topic, records in inputs:
            produced += await produce_all(broker.bootstrap, topic, records)
        worker = WorkerProcess(broker.url, wd / "data", wd / "worker.log", services=services, **(env or {}))
        try:
            started = time.time()
            await asyncio.to_thread(worker.start().wait_ready, 180.0)
            t0 = worker.ready_at or time.time()
            pid = worker.proc.pid  # type: ignore[union-attr]
            sampler = Sampler(pid, wd / "profile.txt").start() if profile else None
            cpu0 = process_cpu_seconds(pid)
            t1, text = await wait_metrics(worker, done, timeout=timeout)
            cpu = process_cpu_seconds(pid) - cpu0
            sampled = await asyncio.to_thread(sampler.stop) if sampler else None
            seconds = max(1e-6, t1 - t0)
            result: dict[str, Any] = {
                "services": services, "inputs": produced, "units": units, "seconds": seconds,
                "per_s": units / seconds, "cpu_seconds": cpu, "cpu_s_per_100k": _per_100k(cpu, produced),
                "start_to_healthy_s": t0 - started, "counts": counts_of(text), "log": str(worker.log_path),
            }
            if sampled is not None:
                result["profile"] = sampled
            if after is not None:
                result.update(await after(broker, worker, t0, t1))
            return result
        finally:
            await asyncio.to_thread(worker.kill)
            shutil.rmtree(wd / "data", ignore_errors=True)


# -- 1. headline: the whole worker over the full lifecycle ------------------------------

async def lifecycle(orders: int, workdir: Path, *, profile: bool = False) -> dict[str, Any]:
    """Default SERVICES; stock seeded, N orders created and paid (all produced first);
    done when order-state applied N ``NotificationSent`` and N inventory outcomes."""
    w = lifecycle_inputs(orders)

    def done(text: str) -> float:
        notified = processed(text, "order-state", "NotificationSent", "success")
        outcome = (processed(text, "order-state", InventoryReserved.type_name(), "success")
                   + processed(text, "order-state", InventoryRejected.type_name(), "success"))
        return min(notified, outcome) / orders

    r = await worker_run("lifecycle", workdir, services=DEFAULT_SERVICES,
                         inputs=[(INVENTORY_REQUESTS, w["stock"]), (CREATED, w["created"]), (PAID, w["paid"])],
                         done=done, units=orders, timeout=max(600.0, orders / 20), profile=profile)
    c = r["counts"]
    r["reserved"] = sum(v for k, v in c.items() if 'service="order-state"' in k and "InventoryReserved" in k
                        and 'status="success"' in k)
    r["rejected"] = sum(v for k, v in c.items() if 'service="order-state"' in k and "InventoryRejected" in k
                        and 'status="success"' in k)
    r["stock_total"], r["demand_total"] = w["stock_total"], w["demand_total"]
    r["steps"] = sum(v for k, v in c.items() if k.startswith("event_processed_total"))
    return r


# -- 2. OrderPaid flood ------------------------------------------------------------------

def _paid_done(services: str, n: int, distinct: int) -> Callable[[str], float]:
    """The fraction done: the least advanced of what must be processed."""
    names = services.split(",")

    def done(text: str) -> float:
        parts = [1.0]
        if "notifications" in names:
            parts.append(processed(text, "notifications") / n)
        if "order-state" in names:
            parts.append(processed(text, "order-state", "OrderPaid") / n)
            if "notifications" in names:
                parts.append(processed(text, "order-state", "NotificationSent") / distinct)
        return min(parts)
    return done


async def paid_flood(n: int, distinct: int, services: str, workdir: Path, *, env: dict[str, str] | None = None,
                     after: After | None = None, name: str = "paid", profile: bool = False) -> dict[str, Any]:
    """``n`` OrderPaid over ``distinct`` ids, no OrderCreated; done when every service
    reading the topic processed every record (order-state: the n OrderPaid and the
    ``distinct`` NotificationSent the notifications service derived)."""
    return await worker_run(name, workdir, services=services, inputs=[(PAID, order_paid_inputs(n, distinct))],
                            done=_paid_done(services, n, distinct), units=n, timeout=max(600.0, n / 50),
                            env=env, after=after, profile=profile)


# -- 3. parked flood and the park timeout ---------------------------------------------------

def dlq_check(n: int, park_timeout: float) -> After:
    """After the flood: wait until ``order-state.dlq`` holds a letter for every parked
    event (each order parks its OrderPaid and the NotificationSent derived from it)
    and count them by reason, source topic and key."""

    async def check(broker: Any, worker: WorkerProcess, t0: float, t1: float) -> dict[str, Any]:
        expired_during = metric_value(worker.metrics(), "dead_letter_total", service="order-state",
                                      reason="out_of_order_timeout")
        letters = await read_topic(broker.bootstrap, OS_DLQ, expect=2 * n, timeout=park_timeout + 240)
        reasons = Counter(r.headers.get("x-dlq-reason", b"?").decode() for r in letters)
        timeout_letters = [r for r in letters if r.headers.get("x-dlq-reason") == b"out_of_order_timeout"]
        by_topic = Counter(r.headers.get("x-source-topic", b"?").decode() for r in timeout_letters)
        paid_keys = {r.key for r in timeout_letters if r.headers.get("x-source-topic", b"").decode() == PAID}
        last = max((r.timestamp_ms for r in timeout_letters), default=0) / 1000
        first = min((r.timestamp_ms for r in timeout_letters), default=0) / 1000
        return {"dlq": {
            "park_timeout_s": park_timeout, "letters": len(letters), "by_reason": dict(reasons),
            "timeout_letters_by_source": dict(by_topic), "paid_orders_dead_lettered": len(paid_keys),
            "expected_orders": n, "all_in_dlq": len(paid_keys) == n,
            "expired_during_measurement": expired_during,
            "overlapped": (t1 - t0) > park_timeout,
            "first_letter_after_ready_s": first - t0 if first else None,
            "last_letter_after_ready_s": last - t0 if last else None,
            "last_letter_after_flood_done_s": last - t1 if last else None,
        }}
    return check


# -- 4. P2 recovery -------------------------------------------------------------------------

BULK_LINE = re.compile(r"bulk recovery: (\d+) changelog records into (\d+) table partitions in ([\d.]+)s "
                       r"\((\d+) records/s\)")


def _this_start(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace").split(f"===== start {worker.starts} =====")[-1]


async def _restart(worker: WorkerProcess) -> float:
    """Start (after a stop), seconds until /health answers 200."""
    t = time.time()
    await asyncio.to_thread(worker.start().wait_ready, 900.0)
    return (worker.ready_at or time.time()) - t


async def _stop(worker: WorkerProcess) -> dict[str, Any]:
    """SIGTERM; how long the process took to exit (and whether it had to be killed)."""
    t = time.time()
    await asyncio.to_thread(worker.stop, 30.0)
    rc = worker.proc.returncode if worker.proc is not None else None
    return {"seconds": time.time() - t, "rc": rc}


async def raw_consume(bootstrap: str, topic: str, *, big_fetches: bool) -> dict[str, Any]:
    """Every record of ``topic`` with a plain aiokafka consumer (no group): records/s.
    ``big_fetches``: the bulk loader's fetch sizes (16 MiB per partition, 20 ms
    wait), else aiokafka's defaults."""
    kwargs: dict[str, Any] = ({"max_partition_fetch_bytes": 16 * 1024 * 1024, "fetch_max_bytes": 64 * 1024 * 1024,
                               "fetch_max_wait_ms": 20} if big_fetches else {})
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **kwargs)
    with aiokafka_records():  # the baseline is plain aiokafka (harness.kafka made this process tolerant)
        return await _raw_consume(consumer, topic)


async def _raw_consume(consumer: AIOKafkaConsumer, topic: str) -> dict[str, Any]:
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await fetch_high_watermarks(consumer._client, tps, await consumer.end_offsets(tps))
        count = 0
        with measured() as span:
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=100_000)
                count += sum(len(v) for v in batch.values())
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return {"records": count, "seconds": span.seconds, "records_per_s": count / span.seconds if span.seconds else None}


async def recovery(keys: int, repeat: int, workdir: Path) -> dict[str, Any]:
    """A dedup table of ``keys`` keys (4 partitions) built by the real worker
    (SERVICES=notifications, distinct OrderPaid); then, ``repeat`` times: a restart
    with the data dir kept, a restart after the data dir was wiped (the bulk loader's
    log line), and a raw consume of the changelog."""
    wd = workdir / f"recovery-{time.strftime('%H%M%S')}"
    wd.mkdir(parents=True)
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, SENT])
        t = time.perf_counter()
        produced = 0
        for chunk in distinct_paid(keys):
            produced += await produce_all(broker.bootstrap, PAID, chunk)
        produce_s = time.perf_counter() - t
        worker = WorkerProcess(broker.url, wd / "data", wd / "worker.log", services="notifications")
        rounds = []
        try:
            await asyncio.to_thread(worker.start().wait_ready, 180.0)
            t0 = worker.ready_at or time.time()
            t1, _ = await wait_metrics(worker, lambda text: processed(text, "notifications") / keys,
                                       timeout=max(900.0, keys / 100))
            build = {"keys": keys, "produce_s": produce_s, "build_s": t1 - t0, "build_events_per_s": keys / (t1 - t0)}
            build["stop"] = await _stop(worker)
            # Not timed for the goal: the first start after the busy build worker's stop
            # (its group member's leave), so both timed starts follow an idle worker's stop.
            build["first_restart_to_healthy_s"] = await _restart(worker)
            build["first_restart_stop"] = await _stop(worker)
            for r in range(repeat):
                one: dict[str, Any] = {"stops": {}}
                for step in (("kept", "wiped") if r % 2 == 0 else ("wiped", "kept")):
                    if step == "wiped":
                        shutil.rmtree(worker.data_dir)
                    seconds = await _restart(worker)
                    one[f"{step}_to_healthy_s"] = seconds
                    if step == "wiped":
                        log = _this_start(worker)
                        m = BULK_LINE.search(log)
                        one["bulk"] = ({"records": int(m[1]), "partitions": int(m[2]), "seconds": float(m[3]),
                                        "records_per_s": float(m[4])} if m else None)
                        one["bulk_stopped_early"] = "bulk recovery stopped" in log
                    one["stops"][step] = await _stop(worker)
                one["raw"] = await raw_consume(broker.bootstrap, DEDUP_CHANGELOG, big_fetches=True)
                one["raw_default_fetch"] = await raw_consume(broker.bootstrap, DEDUP_CHANGELOG, big_fetches=False)
                bulk_rate = (one["bulk"] or {}).get("records_per_s")
                one["ratio"] = bulk_rate / one["raw"]["records_per_s"] if bulk_rate and one["raw"]["records_per_s"] else None
                one["ratio_default_fetch"] = (bulk_rate / one["raw_default_fetch"]["records_per_s"]
                                              if bulk_rate and one["raw_default_fetch"]["records_per_s"] else None)
                one["wiped_minus_kept_s"] = one["wiped_to_healthy_s"] - one["kept_to_healthy_s"]
                rounds.append(one)
        finally:
            await asyncio.to_thread(worker.kill)
            shutil.rmtree(worker.data_dir, ignore_errors=True)
    return {"build": build, "rounds": rounds, "log": str(worker.log_path)}


# -- Quix Streams -----------------------------------------------------------------------------

async def quix(n: int, distinct: int, python: str) -> dict[str, Any]:
    """Quix Streams doing the same dedup and forward (see bench/README-quix.md), from
    its own venv (bench/quix.py)."""
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, "quix.sink"])
        await produce_all(broker.bootstrap, PAID, order_paid_inputs(n, distinct))
        state = tempfile.mkdtemp(prefix="quix-state-")
        out = await asyncio.to_thread(
            subprocess.run,
            [python, "-m", "bench.quix_dedup", "--bootstrap", broker.bootstrap, "--source", PAID,
             "--sink", "quix.sink", "--expect-distinct", str(distinct), "--state-dir", state],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )
        shutil.rmtree(state, ignore_errors=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"quix failed: {(out.stderr or out.stdout)[-1500:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Quix's own span: first consumed record → its final checkpoint (forwards acked).
    # It stops at the Nth distinct id, so a few trailing duplicates may be unread.
    seconds = result["seconds"]
    return {"events": n, "consumed": result.get("events"), "forwarded": result.get("forwarded"), "seconds": seconds,
            "events_per_s": n / seconds, "cpu_s_per_100k": _per_100k(result["cpu_seconds"], n),
            "broker": result.get("broker", "tansu"), "notes": result.get("notes", "")}


# -- P3 relay ----------------------------------------------------------------------------------

async def relay(rows: int, workdir: Path) -> dict[str, Any]:
    """Outbox relay rows/s (SQLite) vs a raw aiokafka producer with acks="all"."""
    from aiokafka import AIOKafkaProducer

    from orders import outbox
    from orders.db import SqliteDatabase
    from orders.metrics import OrdersMetrics
    from orders.relay import Relay
    from orders.settings import OrdersSettings

    events = [OrderPaid(order_id=f"o-{i}", user_id="u-7", amount=12.5) for i in range(rows)]
    db_path = workdir / f"p3-orders-{time.perf_counter_ns()}.db"
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, "raw.sink"])
        db = SqliteDatabase(str(db_path))
        await db.setup()
        for i in range(0, rows, 500):
            async with db.transaction() as tx:
                for e in events[i:i + 500]:
                    await outbox.add_event(tx, e, now=0.0)
        settings = OrdersSettings(kafka_broker=broker.url, database_url="sqlite:///unused", relay_batch_size=500)
        rel = Relay(db, settings, OrdersMetrics())
        # Started (and its topics checked) before the span, as the raw producer below is.
        await rel._ensure_producer()
        with measured() as relay_span:
            done = 0
            while done < rows:  # rounds of up to RELAY_IN_FLIGHT batches in flight, as in Relay.run
                done += await rel.round()
        await rel._reset_producer()
        await db.close()

        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2)
        await producer.start()
        payloads = [(e.order_id.encode(), e.to_bytes()) for e in events]
        with measured() as raw_span:
            for i in range(0, rows, 500):
                acks = [await producer.send("raw.sink", key=k, value=v, headers=[("event_id", b"x" * 36)])
                        for k, v in payloads[i:i + 500]]
                await asyncio.gather(*acks)
        await producer.stop()
    return {
        "relay": {"rows": rows, "seconds": relay_span.seconds, "rows_per_s": rows / relay_span.seconds,
                  "cpu_s_per_100k": _per_100k(relay_span.cpu_seconds, rows)},
        "raw_producer": {"rows": rows, "seconds": raw_span.seconds, "rows_per_s": rows / raw_span.seconds,
                         "cpu_s_per_100k": _per_100k(raw_span.cpu_seconds, rows)},
        "ratio": (rows / relay_span.seconds) / (rows / raw_span.seconds),
    }


#: P4: at most this many orders per outbox transaction when the generator is behind
MAX_PER_TX = 10


# -- P4 latency ----------------------------------------------------------------------------------

async def latency(rate: int, seconds: float, services: str, workdir: Path) -> dict[str, Any]:
    """Order committed (outbox row) → NotificationSent on the broker, at a fixed offered rate."""
    from orders import outbox
    from orders.db import SqliteDatabase
    from orders.metrics import OrdersMetrics
    from orders.relay import Relay
    from orders.settings import OrdersSettings

    total = int(rate * seconds)
    wd = workdir / f"p4-{services.replace(',', '+')}-{time.perf_counter_ns() % 10**6}"
    wd.mkdir(parents=True)
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, SENT])
        worker = WorkerProcess(broker.url, wd / "data", wd / "worker.log", services=services, fetch_max_wait="0.01")
        db = SqliteDatabase(str(wd / "orders.db"))
        await db.setup()
        settings = OrdersSettings(kafka_broker=broker.url, database_url="sqlite:///unused")
        rel = Relay(db, settings, OrdersMetrics())
        relay_task = asyncio.ensure_future(rel.run())
        committed: dict[bytes, float] = {}
        try:
            await asyncio.to_thread(worker.start().wait_ready, 180.0)
            loop = asyncio.get_running_loop()
            start = loop.time()
            i = transactions = 0
            while i < total:
                due = start + i / rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                # Behind schedule (a commit took longer than 1/rate), the orders due by now
                # share one transaction (at most MAX_PER_TX), so the offered rate holds;
                # each order's latency counts from its transaction's commit.
                take = max(1, min(MAX_PER_TX, total - i, int((loop.time() - start) * rate) + 1 - i))
                events = [OrderPaid(order_id=f"o-{j}", user_id="u-7", amount=12.5) for j in range(i, i + take)]
                async with db.transaction() as tx:
                    for event in events:
                        await outbox.add_event(tx, event, now=time.time())
                at = time.time()
                for event in events:
                    committed[event.order_id.encode()] = at
                rel.notify()
                i += take
                transactions += 1
            offered = total / (loop.time() - start)
            sent = await read_topic(broker.bootstrap, SENT, expect=total, timeout=180)
            published = {r.key: r.timestamp_ms / 1000 for r in await read_topic(broker.bootstrap, PAID, expect=total)}
        finally:
            relay_task.cancel()
            await asyncio.gather(relay_task, return_exceptions=True)
            await db.close()
            await asyncio.to_thread(worker.kill)
    latencies = sorted(r.timestamp_ms / 1000 - committed[r.key] for r in sent if r.key in committed)
    relay_part = sorted(published[k] - committed[k] for k in committed if k in published)
    worker_part = sorted(r.timestamp_ms / 1000 - published[r.key] for r in sent if r.key in published)

    def p(values: list[float], pct: int) -> float | None:
        return statistics.quantiles(values, n=100)[pct - 1] * 1000 if len(values) > 1 else None

    return {"services": services, "orders": total, "offered_per_s": offered, "received": len(latencies),
            "transactions": transactions, "orders_per_transaction": total / transactions,
            "p50_ms": p(latencies, 50), "p99_ms": p(latencies, 99),
            "max_ms": latencies[-1] * 1000 if latencies else None,
            "relay_p50_ms": p(relay_part, 50), "relay_p99_ms": p(relay_part, 99),
            "worker_p50_ms": p(worker_part, 50), "worker_p99_ms": p(worker_part, 99)}


# -- P5 retry delays --------------------------------------------------------------------------------

async def retry_delays(delays: tuple[float, ...], keys: int, workdir: Path) -> dict[str, Any]:
    """Observed gap between attempts vs the configured RETRY_DELAYS."""
    fails = len(delays)
    gateway = await GatewayStub(lambda key, seen: 503 if seen < fails else 200).start()
    wd = workdir / f"p5-{time.perf_counter_ns() % 10**6}"
    wd.mkdir(parents=True)
    try:
        with fresh_broker() as broker:
            await create_topics(broker.bootstrap, [PAID, SENT])
            worker = WorkerProcess(broker.url, wd / "data", wd / "worker.log",
                                   services="notifications", notifier_url=gateway.url,
                                   retry_delays=",".join(map(str, delays)))
            try:
                await asyncio.to_thread(worker.start().wait_ready, 180.0)
                await produce_all(broker.bootstrap, PAID, order_paid_inputs(keys, keys))
                got = await read_topic(broker.bootstrap, SENT, expect=keys, timeout=60 + 4 * sum(delays))
            finally:
                await asyncio.to_thread(worker.kill)
    finally:
        await gateway.stop()
    tiers = []
    for n, configured in enumerate(delays):
        gaps = [times[n + 1] - times[n] for times in gateway.times.values() if len(times) > n + 1]
        if not gaps:
            continue
        tiers.append({"tier": n + 1, "configured_s": configured, "mean_s": statistics.mean(gaps),
                      "max_s": max(gaps), "min_s": min(gaps),
                      "mean_over_configured": statistics.mean(gaps) / configured})
    return {"keys": keys, "sent": len(got), "tiers": tiers,
            "worst": max((t["max_s"] / t["configured_s"] for t in tiers), default=None)}
