"""``faust -A streams dlq ls|show|redrive`` against real dead letters (issue 3), and the
dead-letter API behind it (:mod:`streams.ops.dlq`) on the embedded broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer

from streams.ops import dlq
from streams.events import NotificationSent, OrderPaid
from harness.events import paid
from harness.gateway import GatewayStub
from harness.kafka import create_topic, produce, read_topic, wait_consumed
from harness.worker import ROOT

pytestmark = pytest.mark.kafka

PAID, SENT, DLQ = OrderPaid.topic(), NotificationSent.topic(), "notifications.dlq"
HOSTILE = b"\x1b]0;pwned\x07\x1b[2J\xe2\x80\xae"  # OSC title, bell, clear screen, RTL override


def dlq_cli(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BROKER": broker_url}
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams", "dlq", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


async def cli(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(dlq_cli, broker_url, *args)
    assert result.returncode == 0, result.stderr
    return result


def one_error(result: subprocess.CompletedProcess[str], code: int) -> tuple[str, str]:
    """(command, message) of the one line a failed command prints on stderr."""
    assert result.returncode == code and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    command, _, message = lines[0].partition(": error: ")
    return command, message


async def cli_json(broker_url: str, *args: str) -> dict:
    return json.loads((await cli(broker_url, *args, "--json")).stdout)


def letter_headers(source: str, reason: str = "max_attempts", **extra: bytes) -> list[tuple[str, bytes]]:
    return [("x-source-topic", source.encode()), ("x-dlq-reason", reason.encode()), ("x-attempt", b"3"),
            ("x-source-partition", b"0"), ("x-source-offset", b"1"), *extra.items()]


async def test_redrive_after_gateway_recovers_processes_each_once_and_never_twice(broker, worker_factory):
    down = {"yes": True}
    gateway = await GatewayStub(lambda key, seen: 503 if down["yes"] else 200).start()
    try:
        worker = worker_factory(notifier_url=gateway.url, retry_delays="0.2")
        await asyncio.to_thread(worker.start().wait_ready)
        await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(20)])
        await produce(broker.bootstrap, PAID, [(b"bad", b"not json")])
        assert len(await read_topic(broker.bootstrap, DLQ, expect=21)) == 21

        ls = await cli_json(broker.url, "ls", "--service", "notifications", "--reason", "max_attempts")
        assert ls["count"] == 20 and ls["more"] is False
        first_id = ls["dead_letters"][0]["id"]
        assert "1 dead letters" in (await cli(broker.url, "ls", "--service", "notifications", "--reason", "decode_error")).stdout
        # order-state reads events.order.paid.v1 too and dead-letters the same record on its own.
        assert "2 dead letters" in (await cli(broker.url, "ls", "--reason", "decode_error")).stdout
        assert "0 dead letters" in (await cli(broker.url, "ls", "--since", "2099-01-01T00:00:00")).stdout
        shown = (await cli_json(broker.url, "show", first_id))["dead_letters"][0]
        headers = {h["name"]: h["value"] for h in shown["headers"]}
        assert headers["x-dlq-reason"] == "max_attempts" and headers["x-source-topic"] == PAID
        text = (await cli(broker.url, "show", first_id)).stdout
        assert first_id in text and "max_attempts" in text and PAID in text

        dry = await cli(broker.url, "redrive", "--reason", "max_attempts", "--dry-run")
        assert "notifications: would redrive 20" in dry.stdout
        assert first_id in dry.stdout  # each letter is listed, not only counted
        planned = await cli_json(broker.url, "redrive", "--reason", "max_attempts", "--dry-run")
        assert planned["dry_run"] is True and len(planned["letters"]) == 20
        assert {(d["action"], d["target"], d["reason"]) for d in planned["letters"]} == {
            ("would_redrive", PAID, "max_attempts")}
        assert planned["services"]["notifications"]["would_redrive"] == 20
        assert len(await read_topic(broker.bootstrap, PAID)) == 21  # nothing sent

        down["yes"] = False
        part = await cli(broker.url, "redrive", "--service", "notifications", "--reason", "max_attempts", "--limit", "5")
        assert "notifications: redriven 5" in part.stdout
        assert "redrive notifications" in part.stderr  # click's progress bar (its label, off a terminal)
        rest = await cli(broker.url, "redrive", "--service", "notifications", "--reason", "max_attempts")
        assert "notifications: redriven 15, already redriven 5" in rest.stdout

        await wait_consumed(broker.bootstrap, [PAID])
        sent = await read_topic(broker.bootstrap, SENT, expect=20)
        assert sorted(Counter(r.key for r in sent).values()) == [1] * 20

        again = await cli(broker.url, "redrive", "--service", "notifications", "--reason", "max_attempts")
        assert "notifications: redriven 0, already redriven 20" in again.stdout
        source = await read_topic(broker.bootstrap, PAID)
        redriven = [r for r in source if "x-redriven-from" in r.headers]
        assert len(redriven) == 20 and len(source) == 41
        assert all(r.headers["x-redriven-from"].startswith(b"notifications.dlq:") for r in redriven)
        assert all("x-attempt" not in r.headers for r in redriven)
        await wait_consumed(broker.bootstrap, [PAID])
        assert len(await read_topic(broker.bootstrap, SENT)) == 20
    finally:
        await gateway.stop()


async def test_redrive_never_sends_a_letter_to_a_topic_outside_its_services_sources(broker):
    """The incident: a notifications letter whose x-source-topic said inventory.requests
    set a SKU's stock from 94 to 424242 when redriven."""
    await produce(broker.bootstrap, DLQ, [paid("o-good")], headers=letter_headers(PAID), partition=0)
    await produce(broker.bootstrap, DLQ, [(b"s-1", b'{"kind": "set", "sku": "s-1", "qty": 424242}')],
                  headers=letter_headers("inventory.requests"), partition=0)
    good_id, evil_id = f"{DLQ}:0:0", f"{DLQ}:0:1"

    dry = await cli_json(broker.url, "redrive", "--service", "notifications", "--dry-run")
    by_id = {d["id"]: d for d in dry["letters"]}
    assert by_id[good_id]["action"] == "would_redrive" and by_id[good_id]["target"] == PAID
    assert by_id[evil_id]["action"] == "refused" and by_id[evil_id]["target"] is None
    assert by_id[evil_id]["source_topic"] == "inventory.requests"

    done = await cli(broker.url, "redrive", "--service", "notifications")
    assert (f"refused {evil_id}: x-source-topic 'inventory.requests' is not a source topic of notifications"
            in done.stdout)
    assert "notifications: redriven 1, already redriven 0, refused 1" in done.stdout
    assert await read_topic(broker.bootstrap, "inventory.requests", timeout=3) == []
    redriven = await read_topic(broker.bootstrap, PAID, expect=1)
    assert [(r.key, r.headers["x-redriven-from"]) for r in redriven] == [(b"o-good", good_id.encode())]
    # The ledger: this run's claim of the good letter, then its done record (streams.ops.dlq.Claims);
    # nothing about the refused one.
    ledger = await read_topic(broker.bootstrap, f"{DLQ}.redriven", expect=2)
    assert [r.key for r in ledger] == [good_id.encode()] * 2
    assert ["claim" in json.loads(r.value) for r in ledger] == [True, False]

    again = await cli(broker.url, "redrive", "--service", "notifications")
    assert "notifications: redriven 0, already redriven 1, refused 1" in again.stdout
    assert await read_topic(broker.bootstrap, "inventory.requests", timeout=3) == []


async def test_show_and_ls_escape_a_letters_control_characters(broker):
    await produce(broker.bootstrap, DLQ, [(b"o-1" + HOSTILE, b'{"note": "' + HOSTILE + b'"}')],
                  headers=letter_headers(PAID, **{"x-error-message": b"boom " + HOSTILE, "x-raw": b"\xff\x00"}),
                  partition=0)
    await produce(broker.bootstrap, DLQ, [(b"o-2", b"\x80\x81\xfe\x00binary")], headers=letter_headers(PAID),
                  partition=0)

    for args in (("ls",), ("show", f"{DLQ}:0:0", f"{DLQ}:0:1"), ("redrive", "--dry-run")):
        out = (await cli(broker.url, *args)).stdout
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, args
        assert all(ch.isprintable() for line in out.splitlines() for ch in line), args
    shown = (await cli(broker.url, "show", f"{DLQ}:0:0", f"{DLQ}:0:1")).stdout
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202e" in shown
    assert "hex:8081fe0062696e617279" in shown and "hex:ff00" in shown

    as_json = await cli(broker.url, "show", f"{DLQ}:0:0", f"{DLQ}:0:1", "--json")
    assert as_json.stdout.isascii() and "\x1b" not in as_json.stdout
    first, second = json.loads(as_json.stdout)["dead_letters"]
    assert first["key"] == "o-1" + HOSTILE.decode() and first["error"]["message"] == "boom " + HOSTILE.decode()
    assert {"name": "x-raw", "value": None, "value_hex": "ff00"} in first["headers"]
    assert second["value"] is None and second["value_hex"] == "8081fe0062696e617279"


class CountingGetmany:
    """Counts the records a consumer hands over (to show a scan never reads a whole topic)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.records = 0
        original = AIOKafkaConsumer.getmany

        async def getmany(consumer, *partitions, **kwargs):
            batch = await original(consumer, *partitions, **kwargs)
            self.records += sum(len(rs) for rs in batch.values())
            return batch

        monkeypatch.setattr(AIOKafkaConsumer, "getmany", getmany)


async def test_dead_letters_are_read_a_page_at_a_time(broker, monkeypatch):
    await create_topic(broker.bootstrap, DLQ, 3)
    await produce(broker.bootstrap, DLQ, [paid(f"o-{i}") for i in range(300)], headers=letter_headers(PAID),
                  partition=0)
    await produce(broker.bootstrap, DLQ, [(b"bad", b"x%d" % i) for i in range(300)],
                  headers=letter_headers(PAID, "decode_error"), partition=2)  # partition 1 stays empty
    await produce(broker.bootstrap, "inventory.dlq", [(b"s-1", b"not json")],
                  headers=letter_headers("events.order.created.v1", "decode_error"), partition=0)
    kafka: dict = {}

    # The operator console's API: pages of 250 follow one another, every letter once.
    pages, cursor = [], None
    while True:
        letters, cursor = await dlq.page(broker.bootstrap, "notifications", limit=250, after=cursor,
                                         client_kwargs=kafka)
        pages.append([d.id for d in letters])
        if cursor is None:
            break
    assert [len(p) for p in pages] == [250, 250, 100]
    assert pages[1][49:51] == [f"{DLQ}:0:299", f"{DLQ}:2:0"]
    assert len({i for p in pages for i in p}) == 600
    decode = await dlq.page(broker.bootstrap, "notifications", limit=1000, reason="decode_error", client_kwargs=kafka)
    assert len(decode[0]) == 300 and decode[1] is None and {d.partition for d in decode[0]} == {2}

    # A small page reads one fetch, not the topic; one letter by id is a seek.
    counting = CountingGetmany(monkeypatch)
    letters, cursor = await dlq.page(broker.bootstrap, "notifications", limit=10, client_kwargs=kafka)
    assert len(letters) == 10 and cursor == f"{DLQ}:0:9"
    assert counting.records <= dlq.FETCH_RECORDS < 600
    counting.records = 0
    found = await dlq.get_dead_letters(broker.bootstrap, [f"{DLQ}:2:299", f"{DLQ}:0:300", f"{DLQ}:1:0"],
                                       client_kwargs=kafka)
    assert found[f"{DLQ}:2:299"] is not None and found[f"{DLQ}:2:299"].value == b"x299"
    assert found[f"{DLQ}:0:300"] is None and found[f"{DLQ}:1:0"] is None
    assert counting.records == 1

    # The command line: a default limit, a line saying more exist, --after to page on.
    first = await cli(broker.url, "ls", "--service", "notifications")
    assert f"100 dead letters shown; more exist: next page with --after {DLQ}:0:99" in first.stdout
    doc = await cli_json(broker.url, "ls", "--limit", "250", "--after", f"{DLQ}:0:249")
    assert doc["count"] == 250 and doc["more"] is True and doc["next_after"] == f"{DLQ}:2:199"
    last = await cli_json(broker.url, "ls", "--limit", "250", "--after", doc["next_after"])
    # every service of the registry, inventory included (the command's own list lacked it)
    assert last["count"] == 101 and last["more"] is False and last["dead_letters"][-1]["id"] == "inventory.dlq:0:0"

    missing = await asyncio.to_thread(dlq_cli, broker.url, "show", f"{DLQ}:0:300")
    command, message = one_error(missing, 1)
    assert command.endswith("faust dlq show") and message == f"no dead letter {DLQ}:0:300"


async def test_a_stopped_broker_is_one_line_on_stderr(broker):
    broker.stop()
    for args in (("ls",), ("show", f"{DLQ}:0:0"), ("redrive", "--dry-run")):
        result = await asyncio.to_thread(dlq_cli, broker.url, *args)
        command, message = one_error(result, 1)
        assert command.endswith(f"faust dlq {args[0]}")
        assert message == f"Kafka broker {broker.bootstrap} unreachable (KafkaConnectionError)"


async def test_bad_since_is_a_usage_error(broker):
    result = await asyncio.to_thread(dlq_cli, broker.url, "ls", "--since", "yesterday-ish")
    command, message = one_error(result, 2)
    assert command.endswith("faust dlq ls") and message.startswith("Invalid value for '--since': 'yesterday-ish'")
