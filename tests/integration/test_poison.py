"""Poison records go to the DLQ once, bytes unchanged; the worker keeps going (issue 3)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderPaid
from harness.events import paid
from harness.kafka import produce, read_topic, wait_consumed
from harness.worker import metric_value

pytestmark = pytest.mark.kafka

PAID, SENT, DLQ = OrderPaid.topic(), NotificationSent.topic(), "notifications.dlq"

FIVE_MB = b"x" * (5 * 1024 * 1024)

#: name → (key, value, expected x-dlq-reason)
POISON = {
    "not-json": (b"p-1", b"\x00\xffnot json at all{", "decode_error"),
    "wrong-types": (b"p-2", json.dumps({"order_id": "p-2", "user_id": 7, "amount": "lots", "version": "v1"}).encode(), "validation_error"),
    "unknown-version": (b"p-3", json.dumps({"order_id": "p-3", "user_id": "u", "amount": 1, "version": "v9"}).encode(), "unknown_version"),
    "empty-value": (b"p-4", b"", "decode_error"),
    "null-value": (b"p-5", None, "decode_error"),
    "5mb-value": (b"p-6", FIVE_MB, "decode_error"),
    "no-key": (None, paid("p-7")[1], "validation_error"),
    "json-array": (b"p-8", b"[1, 2, 3]", "decode_error"),
}


async def test_poison_records_each_dead_lettered_once_with_their_bytes(broker, worker_factory):
    worker = worker_factory()
    await asyncio.to_thread(worker.start().wait_ready)
    await produce(broker.bootstrap, PAID, [paid(f"a-{i}") for i in range(100)])
    for key, value, _ in POISON.values():
        await produce(broker.bootstrap, PAID, [(key, value)])
    await produce(broker.bootstrap, PAID, [paid(f"b-{i}") for i in range(100)])

    await wait_consumed(broker.bootstrap, [PAID])
    sent = await read_topic(broker.bootstrap, SENT, expect=200)
    assert sorted(Counter(r.key for r in sent).values()) == [1] * 200
    dead = await read_topic(broker.bootstrap, DLQ, expect=len(POISON))
    assert len(dead) == len(POISON)
    by_value = {(d.key, d.value): d for d in dead}
    for name, (key, value, reason) in POISON.items():
        d = by_value.get((key, value if value is not None else None))
        if d is None and value == b"":  # an empty value may come back as None or b""
            d = by_value.get((key, None))
        assert d is not None, f"{name} not in the DLQ with its bytes"
        assert d.headers["x-dlq-reason"].decode() == reason, name
        assert d.headers["x-source-topic"].decode() == PAID
        assert d.headers["x-error-message"], name
    assert worker.proc.poll() is None  # still running
    text = await asyncio.to_thread(worker.metrics)
    assert metric_value(text, "event_processed_total", service="notifications", status="dead_letter") == len(POISON)
