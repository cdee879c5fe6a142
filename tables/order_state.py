"""The order lifecycle: a state machine over two facts, and the table that holds it.

- ``status``: ``NEW → CREATED → PAID → NOTIFIED`` and ``CREATED → CANCELLED``, moved by
  ``OrderCreated``, ``OrderPaid``, ``NotificationSent`` and ``OrderCancelled``;
- ``reservation``: ``PENDING → RESERVED | REJECTED``, moved by the inventory events,
  which need ``OrderCreated`` first and may come before or after payment.

For each incoming event the machine gives one verdict:

- ``APPLY``: the transition is allowed now → ``version + 1``, appended to ``history``;
  then every parked event of the order is judged again (it may now apply).
- ``DUPLICATE``: an event of that type was already applied → nothing changes.
- ``PARK``: its predecessor has not arrived but still can (``OrderPaid`` before
  ``OrderCreated``) → kept in ``parked`` until it applies or ``PARK_TIMEOUT`` passes.
- ``ILLEGAL``: the machine can never allow it (``OrderPaid`` after ``OrderCancelled``)
  → ``order-state.dlq`` with ``illegal_transition``; the state stays as it was.

Table key: ``order_id`` (raw UTF-8 bytes, the topics' key bytes, so ``table_route``
reaches the owner). Value: JSON ``{order_id, status, reservation, version,
history, parked}``.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import Any

from streams.events import (
    Event, InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderPaid,
)

State = dict[str, Any]

#: status → statuses it may move to directly.
STATUS_FLOW: dict[str, tuple[str, ...]] = {
    "NEW": ("CREATED",),
    "CREATED": ("PAID", "CANCELLED"),
    "PAID": ("NOTIFIED",),
    "NOTIFIED": (),
    "CANCELLED": (),
}


@dataclass(frozen=True)
class Rule:
    fact: str  # "status" or "reservation"
    source: str
    target: str


RULES: dict[str, Rule] = {
    OrderCreated.__name__: Rule("status", "NEW", "CREATED"),
    OrderPaid.__name__: Rule("status", "CREATED", "PAID"),
    NotificationSent.__name__: Rule("status", "PAID", "NOTIFIED"),
    OrderCancelled.__name__: Rule("status", "CREATED", "CANCELLED"),
    InventoryReserved.__name__: Rule("reservation", "PENDING", "RESERVED"),
    InventoryRejected.__name__: Rule("reservation", "PENDING", "REJECTED"),
}


def reachable(status: str) -> set[str]:
    """Statuses reachable from ``status`` by one or more transitions."""
    seen: set[str] = set()
    todo = list(STATUS_FLOW[status])
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(STATUS_FLOW[s])
    return seen


class Verdict(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"
    PARK = "park"
    ILLEGAL = "illegal"


@dataclass(frozen=True)
class Incoming:
    """An event as the machine keeps it: type, id, and the record it came in."""

    type: str
    event_id: str
    occurred_at: str | None
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    parked_at_ms: int = 0

    @classmethod
    def of(cls, event: Event, record: Any, now_ms: int) -> "Incoming":
        return cls(
            type=event.type_name(), event_id=str(event.event_id),
            occurred_at=event.occurred_at.isoformat() if event.occurred_at else None,
            topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
            value=record.value or b"", timestamp_ms=record.timestamp_ms,
            headers=tuple(record.headers.items()), parked_at_ms=now_ms,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type, "event_id": self.event_id, "occurred_at": self.occurred_at,
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "key": _b64(self.key), "value": _b64(self.value), "timestamp_ms": self.timestamp_ms,
            "headers": [[k, _b64(v)] for k, v in self.headers], "parked_at_ms": self.parked_at_ms,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Incoming":
        return cls(
            type=d["type"], event_id=d["event_id"], occurred_at=d.get("occurred_at"),
            topic=d["topic"], partition=d["partition"], offset=d["offset"], key=_unb64(d["key"]),
            value=_unb64(d["value"]) or b"", timestamp_ms=d["timestamp_ms"],
            headers=tuple((k, _unb64(v) or b"") for k, v in d["headers"]), parked_at_ms=d["parked_at_ms"],
        )


def _b64(b: bytes | None) -> str | None:
    return base64.b64encode(b).decode() if b is not None else None


def _unb64(s: str | None) -> bytes | None:
    return base64.b64decode(s) if s is not None else None


def new_state(order_id: str) -> State:
    return {"order_id": order_id, "status": "NEW", "reservation": "PENDING", "version": 0,
            "history": [], "parked": []}


def judge(state: State, event_type: str) -> Verdict:
    rule = RULES[event_type]
    if any(h["type"] == event_type for h in state["history"]):
        return Verdict.DUPLICATE
    if rule.fact == "status":
        current = state["status"]
        if current == rule.source:
            return Verdict.APPLY
        return Verdict.PARK if rule.source in reachable(current) else Verdict.ILLEGAL
    if state["status"] == "NEW":
        return Verdict.PARK  # inventory results need OrderCreated first
    return Verdict.APPLY if state["reservation"] == rule.source else Verdict.ILLEGAL


def _apply(state: State, item: Incoming) -> State:
    rule = RULES[item.type]
    return {
        **state,
        rule.fact: rule.target,
        "version": state["version"] + 1,
        "history": [*state["history"], {"type": item.type, "event_id": item.event_id,
                                        "occurred_at": item.occurred_at}],
    }


def step(state: State | None, item: Incoming, order_id: str) -> tuple[State, list[tuple[Incoming, Verdict]]]:
    """Judge ``item`` (and then every parked event) against ``state``.

    Returns the new state and each judged event with its verdict, in order.
    """
    current = dict(state) if state else new_state(order_id)
    current.setdefault("parked", [])
    outcomes: list[tuple[Incoming, Verdict]] = []
    verdict = judge(current, item.type)
    outcomes.append((item, verdict))
    if verdict is Verdict.PARK:
        if not any(p["event_id"] == item.event_id for p in current["parked"]):
            current["parked"] = [*current["parked"], item.to_json()]
        return current, outcomes
    if verdict is not Verdict.APPLY:
        return current, outcomes
    current = _apply(current, item)
    progressed = True
    while progressed and current["parked"]:
        progressed = False
        for raw in current["parked"]:
            parked = Incoming.from_json(raw)
            v = judge(current, parked.type)
            if v is Verdict.PARK:
                continue
            current["parked"] = [p for p in current["parked"] if p["event_id"] != parked.event_id]
            if v is Verdict.APPLY:
                current = _apply(current, parked)
            outcomes.append((parked, v))
            progressed = True
            break
    return current, outcomes


def expired_parked(state: State, now_ms: int, timeout_ms: int) -> list[Incoming]:
    return [Incoming.from_json(p) for p in state.get("parked", []) if now_ms - p["parked_at_ms"] >= timeout_ms]


def without(state: State, event_ids: set[str]) -> State:
    return {**state, "parked": [p for p in state.get("parked", []) if p["event_id"] not in event_ids]}


def public_view(state: State) -> State:
    """What ``GET /orders/{id}`` shows: the state, with parked events summarised."""
    view = {k: v for k, v in state.items() if k != "parked"}
    view["parked"] = [{"type": p["type"], "event_id": p["event_id"]} for p in state.get("parked", [])]
    return view


def define_order_table(app: Any, partitions: int) -> Any:
    return app.Table(
        "order-state",
        partitions=partitions,
        # bytes → Faust's "raw" key serializer: str keys are encoded as UTF-8, the
        # same bytes as the topics' keys (a JSON key serializer would make
        # table_route hash to the wrong worker). Values: JSON.
        key_type=bytes,
        options={"driver": "rocksdict"},
        help="order_id → status, reservation, version, history, parked events",
    )
