"""Dead-letter inspection and redrive (the library behind ``faust -A streams dlq``).

A dead letter is named by where it sits: ``<service>.dlq:<partition>:<offset>``.

Redrive republishes a dead letter's key and bytes, unchanged, to its
``x-source-topic`` with an ``x-redriven-from`` header (the retry and DLQ headers are
dropped, so the event starts a fresh retry ladder). Protocol, per dead letter:

1. send to the source topic, await the broker ack;
2. append its name to ``<service>.dlq.redriven`` (the ledger), await the ack.

A later redrive reads the ledger first and skips every name in it, so the same dead
letter is never redriven twice. Risk next to step 2: a crash between 1 and 2 leaves
the letter unrecorded and a second run sends it again; the consumer's dedup table
then counts it as a duplicate (its key was processed by the first copy).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams import headers as H
from streams.offsets import fetch_high_watermarks
from streams.pipeline import dlq_topic

#: Services that dead-letter (``<service>.dlq``).
SERVICES = ("notifications", "order-state")


def ledger_topic(service: str) -> str:
    return f"{dlq_topic(service)}.redriven"


@dataclass(frozen=True)
class DeadLetter:
    service: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp_ms: int = 0

    @property
    def id(self) -> str:
        return f"{dlq_topic(self.service)}:{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return H.text(self.headers, H.DLQ_REASON, "?")

    @property
    def source_topic(self) -> str:
        return H.text(self.headers, H.SOURCE_TOPIC)

    @property
    def failed_at_ms(self) -> int:
        return H.integer(self.headers, H.FAILED_AT, self.timestamp_ms)

    def source(self) -> str:
        h = self.headers
        return f"{self.source_topic}:{H.text(h, H.SOURCE_PARTITION)}:{H.text(h, H.SOURCE_OFFSET)}"


def parse_since(value: str, now: float | None = None) -> int:
    """``15m``, ``2h``, ``1d``, ``30s`` ago, or an ISO 8601 time → epoch ms."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return int((now - seconds) * 1000)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since {value!r}: expected 15m, 2h, 1d or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def select(
    letters: Iterable[DeadLetter], *, reason: str | None = None, since_ms: int | None = None
) -> list[DeadLetter]:
    out = []
    for d in letters:
        if reason and d.reason != reason:
            continue
        if since_ms is not None and d.failed_at_ms < since_ms:
            continue
        out.append(d)
    return out


#: Extra aiokafka client arguments (TLS / SASL), set once by the CLI from the settings.
CLIENT_KWARGS: dict[str, Any] = {}


async def read_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, bytes | None, dict[str, bytes], int]]:
    """Every record of ``topic`` (partition, offset, key, value, headers, timestamp)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=50, max_partition_fetch_bytes=16 * 1024 * 1024, **CLIENT_KWARGS,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        listed = await consumer.end_offsets(tps)
        ends = await fetch_high_watermarks(consumer._client, tps, listed)
        out = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for records in batch.values():
                for r in records:
                    out.append((r.partition, r.offset, r.key, r.value, dict(r.headers or ()), r.timestamp))
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return sorted(out, key=lambda r: (r[0], r[1]))
    finally:
        await consumer.stop()


async def dead_letters(bootstrap: str, service: str) -> list[DeadLetter]:
    rows = await read_all(bootstrap, dlq_topic(service))
    return [DeadLetter(service, p, o, k, v, h, ts) for p, o, k, v, h, ts in rows]


async def redriven_ids(bootstrap: str, service: str) -> set[str]:
    return {k.decode() for _, _, k, _, _, _ in await read_all(bootstrap, ledger_topic(service)) if k}


@dataclass(frozen=True)
class RedriveResult:
    redriven: int
    skipped: int
    planned: int


async def redrive(
    bootstrap: str,
    service: str,
    letters: Sequence[DeadLetter],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> RedriveResult:
    done_before = await redriven_ids(bootstrap, service)
    todo = [d for d in letters if d.id not in done_before and d.source_topic]
    skipped = len(letters) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    if dry_run or not todo:
        return RedriveResult(0, skipped, len(todo))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 * 1024 * 1024,
                                **CLIENT_KWARGS)
    await producer.start()
    try:
        progress(0, len(todo))
        for n, d in enumerate(todo, 1):
            hdrs = [(k, v) for k, v in d.headers.items() if k not in H.OURS and k != H.REDRIVEN_FROM]
            hdrs.append((H.REDRIVEN_FROM, d.id.encode()))
            await (await producer.send(d.source_topic, key=d.key, value=d.value, headers=hdrs))  # 1
            ledger = json.dumps({"to": d.source_topic, "at": int(time.time() * 1000)}).encode()
            await (await producer.send(ledger_topic(service), key=d.id.encode(), value=ledger))  # 2
            progress(n, len(todo))
    finally:
        await producer.stop()
    return RedriveResult(len(todo), skipped, len(todo))


def progress_bar(out: TextIO = sys.stderr, width: int = 30) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        filled = int(width * done / total) if total else width
        out.write(f"\rredrive [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            out.write("\n")
        out.flush()

    return show


def preview(value: bytes | None, limit: int = 60) -> str:
    if value is None:
        return "<null>"
    text = value[:limit].decode("utf-8", "replace")
    more = f"… ({len(value)} bytes)" if len(value) > limit else ""
    return text.replace("\n", " ") + more


def format_table(letters: Sequence[DeadLetter]) -> str:
    rows = [("ID", "REASON", "ATTEMPT", "FAILED AT (UTC)", "SOURCE", "KEY", "ERROR")]
    for d in letters:
        failed = datetime.fromtimestamp(d.failed_at_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((
            d.id, d.reason, H.text(d.headers, H.ATTEMPT), failed, d.source(),
            preview(d.key, 24), preview(H.text(d.headers, H.ERROR_MESSAGE).encode(), 50),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_one(d: DeadLetter) -> str:
    lines = [f"id:        {d.id}", f"reason:    {d.reason}", f"key:       {preview(d.key, 200)}",
             f"value:     {preview(d.value, 2000)}", "headers:"]
    lines += [f"  {k}: {v.decode('utf-8', 'replace')}" for k, v in sorted(d.headers.items())]
    return "\n".join(lines)
