"""The baseline a user would write by hand: a bare aiokafka loop.

consume 500 at a time → ``json`` decode → rocksdict dedup → produce (``acks="all"``)
→ await the batch's acks → mark the batch in rocksdict → commit offsets.

``python -m bench.bare_loop --bootstrap H:P --source T --sink T --expect-distinct N
[--expect-events M]`` runs until it forwarded N ids and (when given) consumed M
records, then prints one JSON line: events, forwarded, seconds (first record → the
last batch's acks and commit), cpu_seconds (of this process over that span).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time

import rocksdict
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import self_cpu_seconds


async def run(bootstrap: str, source: str, sink: str, expect: int, batch: int, timeout: float,
              expect_events: int = 0) -> dict:
    db = rocksdict.Rdict(tempfile.mkdtemp(prefix="bare-dedup-"), options=rocksdict.Options(raw_mode=True))
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id="bare-loop",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_poll_records=batch)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    events = forwarded = 0
    started = cpu0 = None
    started_at = 0.0
    deadline = time.monotonic() + timeout
    try:
        while (forwarded < expect or events < expect_events) and time.monotonic() < deadline:
            records = [r for rs in (await consumer.getmany(timeout_ms=200, max_records=batch)).values() for r in rs]
            if not records:
                continue
            if started is None:
                started, cpu0, started_at = time.perf_counter(), self_cpu_seconds(), time.time()
            events += len(records)
            seen: set[bytes] = set()
            fresh = []
            for r, marked in zip(records, db.get([r.key for r in records])):
                if marked is None and r.key not in seen:
                    seen.add(r.key)
                    body = json.loads(r.value)
                    fresh.append((r.key, json.dumps({"order_id": body["order_id"], "channel": "log"}).encode()))
            acks = [await producer.send(sink, key=k, value=v) for k, v in fresh]
            await asyncio.gather(*acks)
            wb = rocksdict.WriteBatch(raw_mode=True)
            for k, _ in fresh:
                wb.put(k, b"1")
            db.write(wb)
            await consumer.commit()
            forwarded += len(fresh)
        ended = time.perf_counter()
        cpu_end = self_cpu_seconds()
    finally:
        await producer.stop()
        await consumer.stop()
        db.close()
    return {"events": events, "forwarded": forwarded, "started_at": started_at,
            "seconds": ended - (started or ended), "cpu_seconds": cpu_end - (cpu0 or cpu_end),
            "timed_out": forwarded < expect or events < expect_events}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--sink", required=True)
    p.add_argument("--expect-distinct", type=int, required=True)
    p.add_argument("--expect-events", type=int, default=0)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.bootstrap, a.source, a.sink, a.expect_distinct, a.batch, a.timeout,
                                    a.expect_events))))


if __name__ == "__main__":
    main()
