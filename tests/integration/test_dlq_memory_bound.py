"""Bounded memory for DLQ pages and the CLI (issue 23, item 2): with 30 letters of
15 MB, 1/4/8 console page loads in parallel took the worker to 555 / 1,912 / 3,772 MB,
because a page (and ``dlq ls``) kept every letter's whole value. A page now keeps
:data:`streams.ops.dlq.LIST_PREVIEW_BYTES` of each value, a letter's page at most
``LETTER_PREVIEW_BYTES``, ``dlq show`` reads whole values one letter at a time, and
heavy console requests take turns (:class:`streams.http.console.views.HeavyRequests`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from streams.ops import dlq
from streams.http.console import dlq_page
from streams.http.console.views import LETTER_PREVIEW_BYTES
from harness.kafka import create_topic, produce
from harness.worker import ROOT

pytestmark = pytest.mark.kafka

DLQ = "notifications.dlq"
LETTERS = 12
VALUE_BYTES = 2 * 1024 * 1024
HEADERS = [("x-dlq-reason", b"max_attempts"), ("x-source-topic", b"events.order.paid.v1")]


async def big_letters(bootstrap: str) -> list[str]:
    await create_topic(bootstrap, DLQ, 1)
    for i in range(LETTERS):
        value = bytes([65 + i % 26]) * VALUE_BYTES
        await produce(bootstrap, DLQ, [(f"o-{i}".encode(), value)], headers=HEADERS, partition=0)
    return [f"{DLQ}:0:{i}" for i in range(LETTERS)]


async def test_a_dlq_page_and_dlq_ls_hold_a_bounded_number_of_value_bytes(broker):
    ids = await big_letters(broker.bootstrap)
    bound = LETTERS * dlq.LIST_PREVIEW_BYTES  # 3 KB for 24 MB of letters

    found = await dlq_page.find(broker.bootstrap, dlq_page.Filter(service="notifications"), limit=50)
    assert [d.id for d in found.letters] == ids
    assert sum(len(d.value or b"") for d in found.letters) <= bound
    assert all(d.value_length == VALUE_BYTES and d.is_preview for d in found.letters)

    listed, _ = await dlq.page(broker.bootstrap, "notifications", limit=100, preview_bytes=dlq.LIST_PREVIEW_BYTES)
    assert sum(len(d.value or b"") for d in listed) <= bound
    assert {d.summary()["value_bytes"] for d in listed} == {VALUE_BYTES}

    # A letter's own page reads at most LETTER_PREVIEW_BYTES of it ...
    one = (await dlq.get_dead_letters(broker.bootstrap, ids[:3], preview_bytes=LETTER_PREVIEW_BYTES))
    assert all(len(d.value) == LETTER_PREVIEW_BYTES and d.value_length == VALUE_BYTES for d in one.values())
    # ... and a preview is never redriven as if it were the letter.
    with pytest.raises(ValueError, match="preview"):
        await dlq.redrive_letters(broker.bootstrap, "notifications", list(one.values()), done_before=set())

    # dlq ls --json says each value's whole size; dlq show --json still gives whole values.
    env = {**os.environ, "KAFKA_BROKER": broker.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "faust", "-A", "streams", "dlq", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    ls, show = await asyncio.gather(asyncio.to_thread(cli, "ls", "--json"),
                                    asyncio.to_thread(cli, "show", ids[0], ids[1], "--json"))
    assert ls.returncode == 0 and show.returncode == 0, (ls.stderr, show.stderr)
    assert {d["value_bytes"] for d in json.loads(ls.stdout)["dead_letters"]} == {VALUE_BYTES}
    shown = json.loads(show.stdout)["dead_letters"]
    assert [len(d["value"]) for d in shown] == [VALUE_BYTES, VALUE_BYTES]
