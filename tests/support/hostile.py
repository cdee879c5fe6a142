"""Helpers of the hostile-input suite and the fuzzer (issue 12).

- :class:`Gateway` — an SMS gateway stand-in whose answer depends on the order id's
  prefix (``fail-`` → 503, ``reject-`` → 400, ``stall-`` → held until released,
  anything else → 200) and that records every idempotency key it was asked for;
- :func:`broker_topics` — every topic the broker has (aiokafka's admin client), and
  :func:`allowed_topics` — the ones a worker may create or write (the registry's
  sources, derived, retry and DLQ topics, the redrive ledgers, the tables'
  changelogs, Faust's own);
- :func:`listening` — the local addresses a port is listened on (``ss -ltn`` from /proc);
- :func:`faust_cli` — ``faust -A streams …`` as a subprocess;
- :func:`samples` — a metric's samples with their labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient

from streams import registry
from streams.broker import free_port
from harness.worker import ROOT, http_get, metric_names

APP_ID = "order-streams"


# ---------------------------------------------------------------------------------------
# The SMS gateway


class Gateway:
    """``POST /sms``: 503 for ``fail-*`` order ids, 400 for ``reject-*``, held until
    :meth:`release` for ``stall-*`` (unless ``stall=False``), 200 otherwise. Runs on the
    test's event loop."""

    def __init__(self, *, stall: bool = True) -> None:
        self.stall = stall
        self.port = free_port()
        self.requests: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.key_lengths: list[int] = []
        self.gate = asyncio.Event()
        self.held = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sms"

    def release(self) -> None:
        self.gate.set()

    async def _handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        await request.read()
        self.requests[key] += 1
        self.key_lengths.append(len(key))
        if self.stall and key.startswith("stall-"):
            self.held += 1
            await self.gate.wait()
            self.held -= 1
        if key.startswith("fail-"):
            return web.json_response({"error": "unavailable"}, status=503)
        if key.startswith("reject-"):
            return web.json_response({"error": "rejected"}, status=400)
        self.accepted[key] += 1
        return web.json_response({"ok": True})

    async def __aenter__(self) -> "Gateway":
        app = web.Application()
        app.router.add_post("/sms", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


# ---------------------------------------------------------------------------------------
# Topics


async def broker_topics(bootstrap: str) -> set[str]:
    """Every topic the broker has (a ListTopics; names no topic, so creates none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def changelog(table: str) -> str:
    return f"{APP_ID}-{table}-changelog"


def allowed_topics(tiers: int) -> set[str]:
    """What may exist on a broker a worker (and ``dlq redrive``) ran against."""
    out = set(registry.topics_written(tiers))
    for spec in registry.SERVICES:
        out.update(spec.sources, spec.retry_topics(tiers), (spec.dlq, spec.ledger))
        out.update(changelog(t) for t in spec.tables)
    return out


def foreign_topics(topics: Iterable[str], tiers: int) -> set[str]:
    """Topics outside :func:`allowed_topics` (Faust's and Kafka's own aside)."""
    allowed = allowed_topics(tiers)
    return {t for t in topics
            if t not in allowed and not t.startswith("__") and not t.startswith(f"{APP_ID}-__")}


# ---------------------------------------------------------------------------------------
# Waiting


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 60.0, step: float = 0.2,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:.0f}s")
        await asyncio.sleep(step)


async def wait_caught_up(bootstrap: str, topics: Iterable[str], *, stall: float = 30.0,
                         timeout: float = 170.0, group: str = APP_ID) -> None:
    """Until the group has committed every record now in ``topics``; fails early when the
    committed offsets have not moved for ``stall`` seconds although records wait (a
    stalled worker), instead of waiting out ``timeout``."""
    from harness.kafka import committed, end_offsets

    topics = list(topics)
    ends = {t: await end_offsets(bootstrap, t) for t in topics}
    deadline = time.monotonic() + timeout
    last, moved_at = -1, time.monotonic()
    while True:
        done = {t: await committed(bootstrap, t, group) for t in topics}
        behind = {t: {p: (done[t].get(p, 0), end) for p, end in ends[t].items() if done[t].get(p, 0) < end}
                  for t in topics}
        behind = {t: b for t, b in behind.items() if b}
        if not behind:
            return
        total = sum(sum(d.values()) for d in done.values())
        now = time.monotonic()
        if total != last:
            last, moved_at = total, now
        if now - moved_at > stall:
            raise AssertionError(f"stalled: no offset committed for {stall:.0f}s; behind (committed, end): {behind}")
        if now > deadline:
            raise AssertionError(f"not caught up in {timeout:.0f}s; behind (committed, end): {behind}")
        await asyncio.sleep(0.3)


# ---------------------------------------------------------------------------------------
# Processes, sockets, metrics


def faust_cli(broker_url: str, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "KAFKA_BROKER": broker_url, **{k.upper(): v for k, v in env.items()}}
    return subprocess.run([sys.executable, "-m", "faust", "-A", "streams", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(struct.pack("<I", struct.unpack(">I", raw)[0])))
    words = struct.unpack("<4I", raw)
    return str(ipaddress.IPv6Address(struct.pack(">4I", *words)))


def listening(port: int) -> set[str]:
    """Local addresses with a TCP listener on ``port`` (what ``ss -ltn`` shows)."""
    out: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            row = line.split()
            addr, _, hex_port = row[1].rpartition(":")
            if row[3] == "0A" and int(hex_port, 16) == port:
                out.add(_address(addr))
    return out


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (None when it has none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: only picks the route
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name``: (labels, value). A name the exposition does not export
    raises ``KeyError`` (as :func:`harness.worker.metric_value` does): a misspelt name
    would otherwise read as no samples, and a check that counts them could not fail."""
    if name not in metric_names(text):
        raise KeyError(f"no metric {name!r} in the exposition")
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def health(url: str) -> tuple[int, bytes]:
    try:
        return http_get(url.rstrip("/") + "/health", timeout=5)
    except OSError as exc:
        return 0, repr(exc).encode()


# ---------------------------------------------------------------------------------------
# Records whose header keys are any bytes


class _RawKey(str):
    """A header key that aiokafka's pure-Python record builder writes as the given bytes."""

    raw: bytes

    def __new__(cls, raw: bytes) -> "_RawKey":
        made = super().__new__(cls, raw.decode("utf-8", "surrogateescape"))
        made.raw = raw
        return made

    def encode(self, *args, **kwargs) -> bytes:  # type: ignore[override]
        return self.raw


@contextlib.contextmanager
def python_record_builder():
    """aiokafka producers of this process build record batches with aiokafka's
    pure-Python builder, which writes a header key's ``encode()`` — so a :func:`raw_key`
    goes out as its bytes. (Its C builder only writes ``str`` keys.) Not thread-safe."""
    from aiokafka.producer import message_accumulator, producer as producer_module
    from aiokafka.record import default_records

    python_builder = default_records._DefaultRecordBatchBuilderPy
    saved = (message_accumulator.DefaultRecordBatchBuilder, producer_module.DefaultRecordBatchBuilder)
    message_accumulator.DefaultRecordBatchBuilder = python_builder
    producer_module.DefaultRecordBatchBuilder = python_builder
    try:
        yield
    finally:
        message_accumulator.DefaultRecordBatchBuilder, producer_module.DefaultRecordBatchBuilder = saved


def raw_header_names(headers) -> list[tuple[str, bytes | None]]:
    """Headers for a producer inside :func:`python_record_builder`: bytes names as raw keys."""
    return [(_RawKey(k) if isinstance(k, bytes) else k, v) for k, v in headers]


async def produce_raw_headers(bootstrap: str, topic: str,
                              records: Iterable[tuple[bytes | None, bytes | None, list[tuple[bytes | str, bytes | None]]]],
                              *, partition: int | None = None) -> int:
    """Send ``(key, value, headers)`` records whose header keys may be any bytes (and
    repeat), as a hostile producer can. Every ack awaited."""
    from aiokafka import AIOKafkaProducer

    with python_record_builder():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                    max_request_size=32 * 1024 * 1024)
        await producer.start()
        try:
            futures = []
            for key, value, headers in records:
                futures.append(await producer.send(topic, value=value, key=key,
                                                   headers=raw_header_names(headers) or None, partition=partition))
            await asyncio.gather(*futures)
            return len(futures)
        finally:
            await producer.stop()


async def read_raw(bootstrap: str, topic: str, *, expect: int, timeout: float = 60.0) -> list:
    """aiokafka ``ConsumerRecord`` s of ``topic`` from the beginning, headers as Kafka
    carried them (every one, in order; keys that are not UTF-8 surrogate-escaped), until
    ``expect`` were read or ``timeout``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.faust.compat import read_any_header_key

    read_any_header_key()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=32 * 1024 * 1024)
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout
        while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while len(out) < expect and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(recs)
        return out
    finally:
        await consumer.stop()
