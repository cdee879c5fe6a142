"""Stock per SKU and reservations per order (the ``inventory`` service's rules).

Two tables, both bounded per key:

- ``inventory-stock``, partitioned like ``inventory.requests`` (keyed by SKU):
  ``<sku>`` → ``{"available": n, "reserved": m}``, and ``<sku>\\x00<order id>`` → the
  decision for that order (``reserved`` / ``rejected`` / ``released`` and the quantity).
  A reservation is decided once per (SKU, order): a replayed request re-sends the
  recorded decision and changes nothing. Decisions expire after ``DEDUP_TTL`` (the
  same window in which any replay is recognised), counted in the partition's stream
  time (``t`` is a stream time: :mod:`streams.engine.streamtime`); before, the SKU's value listed
  every order that ever touched it.
- ``inventory-orders``, partitioned like ``inventory.answers`` (keyed by order id):
  the order's expected SKUs and the answers so far; once every SKU answered, the
  outcome, kept (without the items) until it expires. Beside it, ``<order id>\x00created``
  marks that the order's ``OrderCreated`` was handled (any version; expires the same way).

Messages between them are ours (``extra="forbid"``; each a versioned
:class:`~streams.events.Message` with a committed schema, ``schemas/inventory.<name>.v1.json``,
frozen like the events' and named by the records' ``ce_type``) and carry no item lists but the
one ``expect`` message per order, so an order's size on the topics grows with its
SKUs, not with their square (docs/design-notes.md, "State and message sizes").
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from streams.events import MAX_ITEMS, Id, Message, OrderItem

STOCK_TABLE = "inventory-stock"
ORDERS_TABLE = "inventory-orders"
MAX_STOCK = 1_000_000_000

State = dict[str, Any]


class StockCommand(Message):
    """On ``inventory.requests``, keyed by SKU: reserve or release for an order, or set stock."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    domain = "inventory"
    name = "command"

    kind: Literal["reserve", "release", "set"]
    sku: Id
    qty: int = Field(ge=0, le=MAX_STOCK)
    order_id: Id | None = None
    #: partition of ``inventory.answers`` the answer goes to (the order's); None: by key
    reply_to: int | None = Field(None, ge=0, le=100_000)


class Expected(Message):
    """On ``inventory.answers``, keyed by order id: the SKUs an order waits for."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    domain = "inventory"
    name = "expected"

    kind: Literal["expect"] = "expect"
    order_id: Id
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    causation_id: uuid.UUID


class SkuAnswer(Message):
    """On ``inventory.answers``, keyed by order id: one SKU's decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    domain = "inventory"
    name = "answer"

    kind: Literal["answer"] = "answer"
    order_id: Id
    sku: Id
    qty: int = Field(ge=0, le=MAX_STOCK)
    decision: Literal["reserved", "rejected", "released"]


Answer = Annotated[Expected | SkuAnswer, Field(discriminator="kind")]
#: The internal messages of the service (their schemas are exported beside the events').
MESSAGE_TYPES: tuple[type[Message], ...] = (StockCommand, Expected, SkuAnswer)
ANSWER = TypeAdapter(Answer)


def per_sku(items: tuple[OrderItem, ...]) -> dict[str, int]:
    """Quantities per SKU (an order may list one SKU twice)."""
    total: Counter[str] = Counter()
    for item in items:
        total[item.sku] += item.qty
    return dict(total)


def decision_key(sku: str, order_id: str) -> bytes:
    return f"{sku}\x00{order_id}".encode()


def new_stock() -> State:
    return {"available": 0, "reserved": 0}


def apply_command(stock: State | None, decision: State | None, cmd: StockCommand
                  ) -> tuple[State, State | None, str | None, bool]:
    """``(new stock, new decision, decision to announce or None, changed?)``."""
    state = dict(stock or new_stock())
    if cmd.kind == "set":
        changed = state["available"] != cmd.qty
        state["available"] = cmd.qty
        return state, decision, None, changed
    if cmd.kind == "reserve":
        if decision is not None:
            return state, decision, decision["d"], False  # decided before: same answer, no change
        if state["available"] >= cmd.qty:
            state["available"] -= cmd.qty
            state["reserved"] += cmd.qty
            return state, {"d": "reserved", "q": cmd.qty}, "reserved", True
        return state, {"d": "rejected", "q": cmd.qty}, "rejected", True
    # release: give back what this order holds, once
    if decision is not None and decision["d"] == "reserved":
        state["available"] += decision["q"]
        state["reserved"] = max(0, state["reserved"] - decision["q"])
        return state, {"d": "released", "q": decision["q"]}, None, True
    return state, decision, None, False


def new_order() -> State:
    return {"items": None, "skus": None, "causation_id": None, "answers": {}, "outcome": None}


def record_expected(order: State | None, msg: Expected) -> tuple[State, bool]:
    state = dict(order or new_order())
    if state["outcome"] is not None or state["skus"] is not None:
        return state, False
    state.update(items=[i.model_dump() for i in msg.items], skus=per_sku(msg.items),
                 causation_id=str(msg.causation_id))
    return state, True


def record_answer(order: State | None, answer: SkuAnswer) -> tuple[State, bool]:
    """The first answer per SKU wins; an order with an outcome is final."""
    state = dict(order or new_order())
    if state["outcome"] is not None or answer.sku in state["answers"] or answer.decision == "released":
        return state, False
    state["answers"] = {**state["answers"], answer.sku: answer.decision}
    return state, True


def outcome(order: State) -> str | None:
    """``reserved`` / ``rejected`` once every expected SKU answered, else None."""
    if order["outcome"] is not None or order["skus"] is None:
        return None
    if set(order["answers"]) != set(order["skus"]):
        return None
    return "reserved" if all(d == "reserved" for d in order["answers"].values()) else "rejected"


def settled(order: State, result: str) -> State:
    """What is kept of an order once decided: the outcome and answers, not the items."""
    kept = {"items": None, "skus": order["skus"], "causation_id": order["causation_id"],
            "answers": order["answers"], "outcome": result}
    if "t" in order:
        kept["t"] = order["t"]
    return kept
