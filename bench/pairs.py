"""The measured pairs. Each returns a dict of numbers; ``bench/__main__.py`` reports them.

Method (same for both sides of a pair): inputs are produced before the consumer
starts; events/s = input events ÷ wall time from the moment the consumer starts
consuming (the worker: its /health turns 200, polled every 50 ms; the bare loop:
its first fetched batch) to the last output record's broker timestamp;
CPU-seconds are the consumer process's user + system time over that span.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import create_topics, fresh_broker, measured, order_paid_inputs, process_cpu_seconds, produce_all
from streams.events import NotificationSent, OrderPaid
from streams.offsets import fetch_high_watermarks
from tests.support.gateway import GatewayStub
from tests.support.kafka import read_topic
from tests.support.worker import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


def _per_100k(cpu: float, events: int) -> float:
    return cpu * 100_000 / events


async def _sink_span(bootstrap: str, topic: str, expect: int, timeout: float, since: float) -> tuple[int, float]:
    """(records, seconds from ``since`` (epoch) to the last record's timestamp) once ``expect`` arrived."""
    records = await read_topic(bootstrap, topic, expect=expect, idle=1.0, timeout=timeout)
    last = max((r.timestamp_ms for r in records), default=0) / 1000
    return len(records), max(0.0, last - since)


async def p1_worker(n: int, distinct: int, workdir: Path) -> dict[str, Any]:
    """The real worker (``faust -A streams worker``, SERVICES=notifications)."""
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, SENT])
        await produce_all(broker.bootstrap, PAID, order_paid_inputs(n, distinct))
        worker = WorkerProcess(broker.url, workdir / "p1-data", workdir / "p1-worker.log",
                               services="notifications")
        try:
            await asyncio.to_thread(worker.start().wait_ready)
            cpu0 = process_cpu_seconds(worker.proc.pid)  # type: ignore[union-attr]
            got, seconds = await _sink_span(broker.bootstrap, SENT, distinct, timeout=900,
                                            since=worker.ready_at or 0.0)
            cpu = process_cpu_seconds(worker.proc.pid) - cpu0  # type: ignore[union-attr]
            # P2 on the same broker: wipe the data dir, time the table recovery.
            await asyncio.to_thread(worker.stop)
            shutil.rmtree(worker.data_dir)
            await asyncio.to_thread(worker.start().wait_ready)
            recovery = recovery_seconds(worker.log_path.read_text(errors="replace").split("===== start 2")[-1])
            raw = await raw_consume(broker.bootstrap, "order-streams-notifications-dedup-changelog")
        finally:
            worker.kill()
    return {
        "p1_worker": {"events": n, "forwarded": got, "seconds": seconds,
                      "events_per_s": n / seconds, "cpu_s_per_100k": _per_100k(cpu, n)},
        "p2_recovery": {"records": raw["records"], "seconds": recovery,
                        "records_per_s": raw["records"] / recovery if recovery else None},
        "p2_raw_consume": raw,
    }


def recovery_seconds(log: str) -> float:
    """From Faust's "Highwater for active changelog partitions" to "Recovery complete"."""
    import datetime as dt

    def stamp(line: str) -> float:
        return dt.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    lines = log.splitlines()
    start = next(stamp(line) for line in lines if "Highwater for active changelog partitions" in line)
    end = next(stamp(line) for line in lines if "Recovery complete" in line)
    return end - start


async def raw_consume(bootstrap: str, topic: str) -> dict[str, Any]:
    """Every record of ``topic`` with a plain aiokafka consumer: records/s."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
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
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                count += sum(len(v) for v in batch.values())
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return {"records": count, "seconds": span.seconds, "records_per_s": count / span.seconds}


async def p1_bare(n: int, distinct: int) -> dict[str, Any]:
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, "bare.sink"])
        await produce_all(broker.bootstrap, PAID, order_paid_inputs(n, distinct))
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bench.bare_loop", "--bootstrap", broker.bootstrap, "--source", PAID,
             "--sink", "bare.sink", "--expect-distinct", str(distinct)],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        _, seconds = await _sink_span(broker.bootstrap, "bare.sink", distinct, timeout=60,
                                      since=result["started_at"])
    return {"events": n, "forwarded": result["forwarded"], "seconds": seconds,
            "events_per_s": n / seconds, "cpu_s_per_100k": _per_100k(result["cpu_seconds"], n)}


async def p1_quix(n: int, distinct: int) -> dict[str, Any]:
    """Quix Streams doing the same dedup and forward (see bench/README-quix.md)."""
    if not (ROOT / "bench" / "quix_dedup.py").exists():
        return {"error": "bench/quix_dedup.py missing"}
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, "quix.sink"])
        await produce_all(broker.bootstrap, PAID, order_paid_inputs(n, distinct))
        state = tempfile.mkdtemp(prefix="quix-state-")
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bench.quix_dedup", "--bootstrap", broker.bootstrap, "--source", PAID,
             "--sink", "quix.sink", "--expect-distinct", str(distinct), "--state-dir", state],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )
        if out.returncode != 0 or not out.stdout.strip():
            return {"error": (out.stderr or out.stdout)[-2000:]}
        result = json.loads(out.stdout.strip().splitlines()[-1])
    # Quix's own span: first consumed record → last forward acknowledged.
    seconds = result["seconds"]
    return {"events": n, "forwarded": result.get("forwarded"), "seconds": seconds,
            "events_per_s": n / seconds, "cpu_s_per_100k": _per_100k(result["cpu_seconds"], n),
            "broker": result.get("broker", "tansu"), "notes": result.get("notes", "")}


async def p3_relay(rows: int, workdir: Path) -> dict[str, Any]:
    """Outbox relay rows/s (SQLite) vs a raw aiokafka producer with acks="all"."""
    from aiokafka import AIOKafkaProducer

    from orders import outbox
    from orders.db import SqliteDatabase
    from orders.metrics import OrdersMetrics
    from orders.relay import Relay
    from orders.settings import OrdersSettings
    from streams.events import OrderPaid as Paid

    events = [Paid(order_id=f"o-{i}", user_id="u-7", amount=12.5) for i in range(rows)]
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, "raw.sink"])
        db = SqliteDatabase(str(workdir / "p3-orders.db"))
        await db.setup()
        for i in range(0, rows, 500):
            async with db.transaction() as tx:
                for e in events[i:i + 500]:
                    await outbox.add_event(tx, e, now=0.0)
        settings = OrdersSettings(kafka_broker=broker.url, database_url="sqlite:///unused", relay_batch_size=500)
        relay = Relay(db, settings, OrdersMetrics())
        with measured() as relay_span:
            done = 0
            while done < rows:
                done += await relay.round()
        await relay._reset_producer()
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
        "p3_relay": {"rows": rows, "seconds": relay_span.seconds, "rows_per_s": rows / relay_span.seconds,
                     "cpu_s_per_100k": _per_100k(relay_span.cpu_seconds, rows)},
        "p3_raw_producer": {"rows": rows, "seconds": raw_span.seconds, "rows_per_s": rows / raw_span.seconds,
                            "cpu_s_per_100k": _per_100k(raw_span.cpu_seconds, rows)},
    }


async def p4_latency(rate: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """Order committed (outbox row) → NotificationSent on the broker, at a fixed offered rate."""
    from orders import outbox
    from orders.db import SqliteDatabase
    from orders.metrics import OrdersMetrics
    from orders.relay import Relay
    from orders.settings import OrdersSettings
    from streams.events import OrderPaid as Paid

    total = int(rate * seconds)
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, SENT])
        worker = WorkerProcess(broker.url, workdir / "p4-data", workdir / "p4-worker.log",
                               services="notifications", fetch_max_wait="0.01")
        db = SqliteDatabase(str(workdir / "p4-orders.db"))
        await db.setup()
        settings = OrdersSettings(kafka_broker=broker.url, database_url="sqlite:///unused")
        relay = Relay(db, settings, OrdersMetrics())
        relay_task = asyncio.ensure_future(relay.run())
        committed: dict[bytes, float] = {}
        try:
            await asyncio.to_thread(worker.start().wait_ready)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(total):
                due = start + i / rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                event = Paid(order_id=f"o-{i}", user_id="u-7", amount=12.5)
                async with db.transaction() as tx:
                    await outbox.add_event(tx, event, now=time.time())
                committed[event.order_id.encode()] = time.time()
                relay.notify()
            offered = total / (loop.time() - start)
            sent = await read_topic(broker.bootstrap, SENT, expect=total, idle=1.0, timeout=120)
            published = {r.key: r.timestamp_ms / 1000 for r in await read_topic(broker.bootstrap, PAID, expect=total, idle=0.5)}
        finally:
            relay_task.cancel()
            await asyncio.gather(relay_task, return_exceptions=True)
            await db.close()
            worker.kill()
    latencies = sorted(r.timestamp_ms / 1000 - committed[r.key] for r in sent if r.key in committed)
    relay = sorted(published[k] - committed[k] for k in committed if k in published)
    worker_part = sorted(r.timestamp_ms / 1000 - published[r.key] for r in sent if r.key in published)
    q = statistics.quantiles(latencies, n=100)

    def p(values: list[float], pct: int) -> float:
        return statistics.quantiles(values, n=100)[pct - 1] * 1000

    return {"orders": total, "offered_per_s": offered, "received": len(latencies),
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "max_ms": latencies[-1] * 1000,
            "relay_p50_ms": p(relay, 50), "relay_p99_ms": p(relay, 99),
            "worker_p50_ms": p(worker_part, 50), "worker_p99_ms": p(worker_part, 99)}


async def p5_retry_delays(delays: tuple[float, ...], keys: int, workdir: Path) -> dict[str, Any]:
    """Observed gap between attempts vs the configured RETRY_DELAYS."""
    fails = len(delays)
    gateway = await GatewayStub(lambda key, seen: 503 if seen < fails else 200).start()
    try:
        with fresh_broker() as broker:
            await create_topics(broker.bootstrap, [PAID, SENT])
            worker = WorkerProcess(broker.url, workdir / "p5-data", workdir / "p5-worker.log",
                                   services="notifications", notifier_url=gateway.url,
                                   retry_delays=",".join(map(str, delays)))
            try:
                await asyncio.to_thread(worker.start().wait_ready)
                await produce_all(broker.bootstrap, PAID, order_paid_inputs(keys, keys))
                await read_topic(broker.bootstrap, SENT, expect=keys, idle=0.5, timeout=120)
            finally:
                worker.kill()
    finally:
        await gateway.stop()
    tiers = []
    for n, configured in enumerate(delays):
        gaps = [times[n + 1] - times[n] for times in gateway.times.values() if len(times) > n + 1]
        tiers.append({"tier": n + 1, "configured_s": configured, "mean_s": statistics.mean(gaps),
                      "max_s": max(gaps), "min_s": min(gaps),
                      "mean_over_configured": statistics.mean(gaps) / configured})
    return {"keys": keys, "tiers": tiers}
