"""The order lifecycle: a state machine over two facts, and the shape of its state.

- ``status``: ``NEW → CREATED → PAID → NOTIFIED`` and ``CREATED → CANCELLED``, moved by
  ``OrderCreated``, ``OrderPaid``, ``NotificationSent`` and ``OrderCancelled``;
- ``reservation``: ``PENDING → RESERVED | REJECTED``, moved by the inventory events,
  which need ``OrderCreated`` first and may come before or after payment.

For each incoming event the machine gives one verdict:

- ``APPLY``: the transition is allowed now → ``version + 1``, appended to ``history``;
  then every parked event of the order is judged again (it may now apply).
- ``DUPLICATE``: an event of that type was already applied — or one is already
  parked — → nothing changes. So an order parks **at most one event per type**, and
  its state stays bounded (docs/design-notes.md, "State and message sizes").
- ``PARK``: its predecessor has not arrived but still can (``OrderPaid`` before
  ``OrderCreated``) → kept in ``parked`` until it applies or ``PARK_TIMEOUT`` passes
  in the partition's stream time (``since`` is a stream time, never a wall clock's:
  :mod:`streams.engine.streamtime`).
- ``ILLEGAL``: the machine can never allow it (``OrderPaid`` after ``OrderCancelled``)
  → ``order-state.dlq`` with ``illegal_transition``; the state stays as it was.

Table key: ``order_id`` (raw UTF-8 bytes, the topics' key bytes). Value: JSON
``{order_id, status, reservation, version, history, parked}``; ``parked`` maps an
event type to the event as kept: where it came from, its record time, when it was
parked and its JSON text (no headers: they are other people's data and unbounded).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from streams.engine.records import Record
from streams.events import (
    Event, InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderPaid,
)

TABLE = "order-state"
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


#: status → statuses reachable from it (precomputed: judged once per event).
REACHABLE: dict[str, frozenset[str]] = {status: frozenset(reachable(status)) for status in STATUS_FLOW}


class Verdict(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"
    PARK = "park"
    ILLEGAL = "illegal"


class Incoming:
    """An event as the machine keeps it: type, id, event time, and where it came from.
    (A plain slotted class: one is built per event, and a frozen dataclass's
    ``__init__`` cost several times as much.)"""

    __slots__ = ("type", "event_id", "occurred_at", "topic", "partition", "offset", "timestamp_ms",
                 "value", "parked_at_ms")

    def __init__(self, type: str, event_id: str, occurred_at: str | None, topic: str, partition: int,
                 offset: int, timestamp_ms: int, value: str, parked_at_ms: int = 0) -> None:
        self.type = type
        self.event_id = event_id
        self.occurred_at = occurred_at
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        #: the record's JSON text (kept so a parked event can be dead-lettered verbatim)
        self.value = value
        self.parked_at_ms = parked_at_ms

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Incoming) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self) -> str:
        return f"Incoming({self.type}, {self.event_id}, {self.topic}[{self.partition}]@{self.offset})"

    @classmethod
    def of(cls, event: Event, record: Record, now_ms: int) -> "Incoming":
        occurred = event.occurred_at
        value = record.value
        return cls(event.type_name(), str(event.event_id), occurred.isoformat() if occurred else None,
                   record.topic, record.partition, record.offset, record.timestamp_ms,
                   value.decode("utf-8", "replace") if value else "", now_ms)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.event_id, "at": self.occurred_at, "t": self.topic, "p": self.partition,
                "o": self.offset, "ts": self.timestamp_ms, "v": self.value, "since": self.parked_at_ms}

    @classmethod
    def from_json(cls, type_name: str, d: dict[str, Any]) -> "Incoming":
        return cls(type=type_name, event_id=d["id"], occurred_at=d.get("at"), topic=d["t"], partition=d["p"],
                   offset=d["o"], timestamp_ms=d["ts"], value=d["v"], parked_at_ms=d["since"])

    def record(self, order_id: str) -> Record:
        """The record this event came in (headers not kept), for the DLQ."""
        return Record(self.topic, self.partition, self.offset, order_id.encode(), self.value.encode(),
                      self.timestamp_ms, {})


def new_state(order_id: str) -> State:
    return {"order_id": order_id, "status": "NEW", "reservation": "PENDING", "version": 0,
            "history": [], "parked": {}}


def judge(state: State, event_type: str) -> Verdict:
    rule = RULES[event_type]
    if any(h["type"] == event_type for h in state["history"]):
        return Verdict.DUPLICATE
    if rule.fact == "status":
        current = state["status"]
        if current == rule.source:
            return Verdict.APPLY
        return Verdict.PARK if rule.source in REACHABLE[current] else Verdict.ILLEGAL
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
                                        "occurred_at": item.occurred_at, "topic": item.topic,
                                        "partition": item.partition, "offset": item.offset,
                                        "timestamp_ms": item.timestamp_ms}],
    }


def step(state: State | None, item: Incoming, order_id: str) -> tuple[State, list[tuple[Incoming, Verdict]]]:
    """Judge ``item`` (and then every parked event) against ``state``.

    Returns the new state and each judged event with its verdict, ``item`` first.
    """
    current = dict(state) if state else new_state(order_id)
    parked: dict[str, Any] = dict(current.get("parked") or {})
    verdict = judge(current, item.type)
    if verdict is Verdict.PARK and item.type in parked:
        verdict = Verdict.DUPLICATE  # one parked event per type: the first one stays
    outcomes: list[tuple[Incoming, Verdict]] = [(item, verdict)]
    if verdict is Verdict.PARK:
        parked[item.type] = item.to_json()
        return {**current, "parked": parked}, outcomes
    if verdict is not Verdict.APPLY:
        return current, outcomes
    current = _apply(current, item)
    progressed = True
    while progressed and parked:
        progressed = False
        for type_name, raw in list(parked.items()):
            v = judge(current, type_name)
            if v is Verdict.PARK:
                continue
            waiting = Incoming.from_json(type_name, raw)
            del parked[type_name]
            if v is Verdict.APPLY:
                current = _apply(current, waiting)
            outcomes.append((waiting, v))
            progressed = True
            break
    return {**current, "parked": parked}, outcomes


def expired_parked(state: State, now_ms: int, timeout_ms: int) -> list[Incoming]:
    return [Incoming.from_json(t, p) for t, p in (state.get("parked") or {}).items()
            if now_ms - p["since"] >= timeout_ms]


def without(state: State, types: set[str]) -> State:
    return {**state, "parked": {t: p for t, p in (state.get("parked") or {}).items() if t not in types}}


def public_view(state: State) -> State:
    """What ``GET /orders/{id}`` shows: the documented fields, parked events summarised
    (type, id, since when) — never their bytes or headers."""
    return {
        "order_id": state["order_id"],
        "status": state["status"],
        "reservation": state["reservation"],
        "version": state["version"],
        "history": [{k: h.get(k) for k in ("type", "event_id", "occurred_at", "topic", "partition",
                                            "offset", "timestamp_ms")} for h in state["history"]],
        "parked": [{"type": t, "event_id": p["id"], "parked_at_ms": p["since"]}
                   for t, p in (state.get("parked") or {}).items()],
    }
