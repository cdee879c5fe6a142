"""The worker's logs as an operator reads them (issue 15): ``LOG_FORMAT=json`` is one
JSON object per line from start to stop — nothing else on stdout or stderr (Faust's
start-up banner is a table on stdout; the README's command runs with ``--quiet``) — and a
dead letter is one line with its reason, topic, partition, offset and key."""

from __future__ import annotations

import asyncio
import json

import pytest

from streams.events import OrderPaid
from harness.kafka import produce, wait_consumed

pytestmark = pytest.mark.kafka

PAID = OrderPaid.topic()


async def test_json_logs_are_one_object_per_line_and_a_dead_letter_is_one_line(broker, worker_factory):
    worker = worker_factory("w1", log_format="json", services="notifications")
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, [(b"o-poison", b"not json")])
    await wait_consumed(broker.bootstrap, [PAID])
    await asyncio.to_thread(worker.stop)
    assert worker.proc is not None and worker.proc.returncode == 0, worker.tail()

    lines = [line for line in worker.log_path.read_text().splitlines()
             if line.strip() and not line.startswith("===== start")]
    objects = []
    for line in lines:
        try:
            objects.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON object: {line[:200]!r}")
    assert all(isinstance(o, dict) and {"time", "level", "service", "message"} <= o.keys() for o in objects)
    assert {o["service"] for o in objects} == {"worker"}
    assert any("engine ready" in o["message"] for o in objects)
    letters = [o for o in objects if "dead-lettered" in o["message"]]
    assert len(letters) == 1, letters
    assert {k: letters[0].get(k) for k in ("reason", "topic", "offset", "key")} == {
        "reason": "decode_error", "topic": PAID, "offset": 0, "key": "o-poison"}
    assert isinstance(letters[0].get("partition"), int)
