"""Fakes of the app's own ports, for unit tests of its services. The engine's fakes
(publisher, state store, consumer, clock) are :mod:`streams.engine.testing`.

* :class:`FakeNotifier` — the SMS gateway port; raises per order id on demand.
* :func:`paid_record` — a raw OrderPaid record in the contract's shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from agents.notifier import Notification
from streams.engine.records import Record
from streams.engine.testing import NOW_MS
from streams.events import OrderPaid

PAID_TOPIC = OrderPaid.topic()


class FakeNotifier:
    channel = "sms"
    concurrent = True

    def __init__(self, errors: Mapping[str, BaseException] | None = None) -> None:
        self.errors = dict(errors or {})
        self.calls: list[tuple[Notification, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0

    async def send(self, notification: Notification, idempotency_key: str) -> None:
        self.calls.append((notification, idempotency_key))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            exc = self.errors.get(notification.order_id)
            if exc is not None:
                raise exc
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        return None

    def keys(self) -> list[str]:
        return [k for _, k in self.calls]


def paid_record(
    order_id: str,
    *,
    partition: int = 0,
    offset: int = 0,
    timestamp_ms: int = NOW_MS - 1000,
    headers: Mapping[str, bytes] | None = None,
    key: bytes | None | str = "same",
    topic: str = PAID_TOPIC,
    **fields: Any,
) -> Record:
    """A raw OrderPaid record in the contract's shape (JSON, key = order id)."""
    body = {"order_id": order_id, "user_id": "u-7", "amount": 12.5, "version": "v1", **fields}
    return Record(
        topic=topic,
        partition=partition,
        offset=offset,
        key=order_id.encode() if key == "same" else key,  # type: ignore[arg-type]
        value=json.dumps(body).encode(),
        timestamp_ms=timestamp_ms,
        headers=dict(headers or {}),
    )
