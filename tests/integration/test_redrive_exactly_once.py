"""Redrive exactly once per letter under concurrency (issue 23, item 3): two
``dlq redrive`` runs at once over 60 letters sent 120 records and wrote 120 ledger
entries — "never the same one twice" held for one runner only. Every runner now claims
each letter on the ledger and only the first claim in the broker's order sends
(:class:`streams.ops.dlq.Claims`). Shown with two CLI runs, then with a CLI run, a
console job and a third runner at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from streams.ops import dlq
from streams.http.console import redrive
from streams.http.console.dlq_page import Filter
from streams.events import OrderPaid
from harness.kafka import create_topic, produce, read_topic
from harness.worker import ROOT

pytestmark = pytest.mark.kafka

PAID, DLQ, LEDGER = OrderPaid.topic(), "notifications.dlq", "notifications.dlq.redriven"
HEADERS = [("x-dlq-reason", b"max_attempts"), ("x-source-topic", PAID.encode()), ("x-attempt", b"3")]


async def letters(bootstrap: str, first: int, n: int) -> list[str]:
    await produce(bootstrap, DLQ, [(f"o-{i}".encode(), b'{"order_id": "o-%d"}' % i) for i in range(first, first + n)],
                  headers=HEADERS, partition=0)
    return [f"{DLQ}:0:{i}" for i in range(first, first + n)]


class Gate:
    """A TCP proxy in front of the broker's bootstrap address that holds every
    connection until :meth:`open`: runners started one after another begin at once."""

    def __init__(self, bootstrap: str) -> None:
        self.host, port = bootstrap.rsplit(":", 1)
        self.port = int(port)
        self.opened = asyncio.Event()
        self.waiting = 0

    async def __aenter__(self) -> "Gate":
        self.server = await asyncio.start_server(self.held, "127.0.0.1", 0)
        self.url = f"kafka://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def held(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.waiting += 1
        await self.opened.wait()
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def open_when_waiting(self, n: int, running: list[asyncio.Future]) -> None:
        deadline = time.monotonic() + 120
        while self.waiting < n:
            assert time.monotonic() < deadline and not any(f.done() for f in running), "runners did not start"
            await asyncio.sleep(0.05)
        self.opened.set()


def cli_redrive(broker_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BROKER": broker_url}
    return subprocess.run([sys.executable, "-m", "faust", "-A", "streams", "dlq", "redrive", "--service",
                           "notifications", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


async def end_offset(bootstrap: str, topic: str) -> int:
    records = await read_topic(bootstrap, topic, timeout=10)
    return len(records)


async def sent_and_recorded(bootstrap: str, expect: int) -> tuple[Counter[str], Counter[str]]:
    """How often each letter id reached the source topic, and its done records."""
    sent = await read_topic(bootstrap, PAID, expect=expect)
    by_letter = Counter(dict(r.headers).get("x-redriven-from", b"").decode() for r in sent)
    ledger = await read_topic(bootstrap, LEDGER)
    done = Counter(r.key.decode() for r in ledger if dlq.ledger_kind(r.value) == "done")
    return by_letter, done


async def test_concurrent_redrives_send_each_letter_exactly_once(broker):
    await create_topic(broker.bootstrap, DLQ, 1)
    await create_topic(broker.bootstrap, PAID, 1)
    await create_topic(broker.bootstrap, LEDGER, 1)

    # Two CLI runs at once over 150 letters (several seconds of sends each: they overlap).
    first = await letters(broker.bootstrap, 0, 150)
    async with Gate(broker.bootstrap) as gate:
        started = [asyncio.ensure_future(asyncio.to_thread(cli_redrive, gate.url)) for _ in range(2)]
        await gate.open_when_waiting(2, started)
        runs = await asyncio.gather(*started)
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    by_letter, done = await sent_and_recorded(broker.bootstrap, 150)
    assert by_letter == Counter({i: 1 for i in first}), by_letter.most_common(3)
    assert done == Counter({i: 1 for i in first}), done.most_common(3)

    # Three runners at once — a CLI run, a console job and the library call both use — over 40 more.
    # The two in-process runners start once the CLI run has begun to redrive.
    second = await letters(broker.bootstrap, 150, 150)
    ledger_end = await end_offset(broker.bootstrap, LEDGER)
    cli = asyncio.ensure_future(asyncio.to_thread(cli_redrive, broker.url))
    deadline = time.monotonic() + 120
    while await end_offset(broker.bootstrap, LEDGER) == ledger_end:
        assert time.monotonic() < deadline and not cli.done(), "the CLI run wrote nothing to the ledger"
        await asyncio.sleep(0.05)
    jobs = redrive.Jobs(broker.bootstrap, {})
    job = jobs.start(redrive.Selection("filter", filter=Filter(service="notifications")), dry_run=False)
    cli_run, _, library_run = await asyncio.gather(cli, asyncio.gather(*jobs.tasks),
                                                   dlq.redrive(broker.bootstrap, "notifications"))
    assert cli_run.returncode == 0, cli_run.stderr
    assert job.state == "done", job.error
    sent_by = json.loads(cli_run.stdout)["services"]["notifications"]["redriven"]
    assert sent_by + job.counts["redriven"] + library_run.redriven == 150  # shared, not repeated
    by_letter, done = await sent_and_recorded(broker.bootstrap, 300)
    assert by_letter == Counter({i: 1 for i in first + second}), by_letter.most_common(3)
    assert done == Counter({i: 1 for i in first + second}), done.most_common(3)
