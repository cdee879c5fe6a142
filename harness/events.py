"""Event factories: the JSON shapes other services send (see the contract)."""

from __future__ import annotations

import json
import uuid


def paid(order_id: str, *, user_id: str = "u-7", amount: float | str = 12.5, **extra: object) -> tuple[bytes, bytes]:
    body = {"order_id": order_id, "user_id": user_id, "amount": amount, "version": "v1", **extra}
    return order_id.encode(), json.dumps(body).encode()


def created(order_id: str, *, user_id: str = "u-7", items: list[dict] | None = None,
            amount: str = "25.00", **extra: object) -> tuple[bytes, bytes]:
    body = {"order_id": order_id, "user_id": user_id, "items": items or [{"sku": "s-1", "qty": 2}],
            "amount": amount, "version": "v1", **extra}
    return order_id.encode(), json.dumps(body).encode()


def with_event_id(record: tuple[bytes, bytes], event_id: uuid.UUID | None = None) -> tuple[bytes, bytes]:
    key, value = record
    body = json.loads(value)
    body["event_id"] = str(event_id or uuid.uuid4())
    return key, json.dumps(body).encode()


def cancelled(order_id: str, *, reason: str = "customer", **extra: object) -> tuple[bytes, bytes]:
    body = {"order_id": order_id, "reason": reason, "version": "v1", **extra}
    return order_id.encode(), json.dumps(body).encode()


def notification_sent(order_id: str, *, user_id: str = "u-7", **extra: object) -> tuple[bytes, bytes]:
    body = {"order_id": order_id, "user_id": user_id, "channel": "sms",
            "causation_id": str(uuid.uuid4()), "version": "v1", **extra}
    return order_id.encode(), json.dumps(body).encode()
