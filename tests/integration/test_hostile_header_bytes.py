"""Any bytes Kafka can carry in a header key (issue 23, items 1 and 9), against the
embedded broker, a real worker and the ``dlq`` commands.

One record on ``events.order.paid.v1`` whose header *key* was not UTF-8 crashed
aiokafka's fetcher inside the worker, which exited, and again 6–7 ms after every
restart; nothing was dead-lettered. The same record in a DLQ broke ``dlq ls``,
``dlq redrive`` and the console's page for that service."""

from __future__ import annotations

import asyncio
import json

import pytest

from streams.engine import headers as H
from streams.events import NotificationSent, OrderPaid
from harness.events import paid
from tests.support.hostile import faust_cli, produce_raw_headers, read_raw
from harness.kafka import read_topic, wait_consumed
from harness.worker import WorkerProcess, http_get

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()
RAW = b"\xff\xfe"
RAW_NAME = "x-raw-key:" + RAW.hex()  # H.RAW_KEY_PREFIX, spelled out: the test also runs on a build without it


def names(record) -> list[str]:
    return [k for k, _ in record.headers]


async def test_a_header_key_that_is_not_utf8_is_dead_lettered_and_every_service_goes_on(broker, worker_factory):
    worker: WorkerProcess = worker_factory("w1")
    await asyncio.to_thread(worker.start().wait_ready)
    raw_headers = [("trace", b"1"), (RAW, b"v"), ("trace", b"2"), ("trace", b"3")]
    ok1, ok2 = paid("ok-1"), paid("ok-2")
    bad = paid("raw-1")
    await produce_raw_headers(broker.bootstrap, PAID, [(*ok1, []), (*bad, raw_headers), (*ok2, [])], partition=0)
    sent = await read_topic(broker.bootstrap, SENT, until=lambda rs: {b"ok-1", b"ok-2"} <= {r.key for r in rs})
    assert {b"ok-1", b"ok-2"} <= {r.key for r in sent}
    assert b"raw-1" not in {r.key for r in sent}, worker.tail()
    await wait_consumed(broker.bootstrap, [PAID])  # committed past it: no crash loop
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
    # Both services that read OrderPaid dead-letter it, with every header in order.
    for dlq in ("notifications.dlq", "order-state.dlq"):
        [letter] = await read_raw(broker.bootstrap, dlq, expect=1)
        assert letter.key == b"raw-1" and letter.value == bad[1]
        assert names(letter)[:4] == ["trace", RAW_NAME, "trace", "trace"], names(letter)
        got = dict(letter.headers)
        assert got[H.DLQ_REASON] == b"decode_error" and got[RAW_NAME] == b"v"
    # A restart reads the same partition again from its committed offset: still up.
    worker.kill()
    await asyncio.to_thread(worker.start().wait_ready)
    await produce_raw_headers(broker.bootstrap, PAID, [(*paid("ok-3"), [])], partition=0)
    await read_topic(broker.bootstrap, SENT, until=lambda rs: b"ok-3" in {r.key for r in rs})
    assert worker.proc.poll() is None, worker.tail()


async def test_dlq_commands_and_console_read_letters_whose_header_keys_are_not_utf8(broker, worker_factory):
    """A letter written straight to the DLQ by someone else, its header keys raw bytes."""
    worker = worker_factory("w1")
    await asyncio.to_thread(worker.start().wait_ready)
    foreign = [(b"\x80evil\x1b", b"x"), (H.SOURCE_TOPIC, PAID.encode()), (H.DLQ_REASON, b"decode_error"),
               ("trace", b"1"), ("trace", b"2")]
    await produce_raw_headers(broker.bootstrap, "notifications.dlq", [(*paid("raw-2"), foreign)], partition=0)
    listed = await asyncio.to_thread(faust_cli, broker.url, "dlq", "ls", "--service", "notifications", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)["dead_letters"]
    letter_id = row["id"]
    shown = await asyncio.to_thread(faust_cli, broker.url, "dlq", "show", letter_id)
    assert shown.returncode == 0, shown.stderr
    assert "\\x80evil\\x1b" in shown.stdout and "\x1b" not in shown.stdout
    as_json = await asyncio.to_thread(faust_cli, broker.url, "dlq", "show", letter_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    [doc] = json.loads(as_json.stdout)["dead_letters"]
    hdrs = doc["headers"]
    assert {"name": None, "name_hex": b"\x80evil\x1b".hex(), "value": "x"} in hdrs
    assert [h["value"] for h in hdrs if h.get("name") == "trace"] == ["1", "2"]
    status, body = await asyncio.to_thread(http_get, f"{worker.url}/console/dlq?service=notifications")
    assert status == 200, body[:500]
    status, body = await asyncio.to_thread(http_get, f"{worker.url}/console/dlq/letters/{letter_id}")
    assert status == 200, body[:500]
    redrive = await asyncio.to_thread(faust_cli, broker.url, "dlq", "redrive", "--service", "notifications")
    assert redrive.returncode == 0, redrive.stdout + redrive.stderr
    again = await read_raw(broker.bootstrap, PAID, expect=1)
    [copy] = [r for r in again if r.key == b"raw-2"]
    assert names(copy)[:3] == [H.RAW_KEY_PREFIX + b"\x80evil\x1b".hex(), "trace", "trace"], names(copy)


READERS = """
import asyncio, sys
from {module} import {reader}
got = asyncio.run({reader}(sys.argv[1], sys.argv[2]{extra}))
print(sorted((r.key, sorted(r.headers.items())) for r in got))
"""


@pytest.mark.parametrize("module, reader, extra", [("harness.kafka", "read_topic", ", expect=2"),
                                                   ("bench.chaos", "read_isolated", ", 'read_committed'")])
async def test_the_harness_and_chaos_readers_read_a_header_key_that_is_not_utf8(broker, module, reader, extra):
    """The tests' and the chaos runs' readers (issue 23: "every reader of records ...
    the bench and chaos tools"), each in a fresh process that imports nothing else:
    aiokafka's own reader raised UnicodeDecodeError on the record."""
    import subprocess
    import sys

    from harness.worker import ROOT

    topic = f"raw-{reader}"
    await produce_raw_headers(broker.bootstrap, topic, [(b"bad", b"v", [(RAW, b"x"), ("t", b"1")]),
                                                        (b"ok", b"v", [("t", b"2")])], partition=0)
    script = READERS.format(module=module, reader=reader, extra=extra)
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script, broker.bootstrap, topic],
                                  cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == repr([(b"bad", [("t", b"1"), ("\udcff\udcfe", b"x")]), (b"ok", [("t", b"2")])])
