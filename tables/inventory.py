"""Stock per SKU and reservations per order (the ``inventory`` service's rules).

Two tables:

- ``inventory-stock``, keyed by SKU: ``{"available": n, "decisions": {order_id:
  {"decision": reserved|rejected|released, "qty": q}}}``. A reservation is decided
  once per (SKU, order): a replayed request re-sends the recorded decision and
  changes nothing, so replaying every ``OrderCreated`` is harmless.
- ``inventory-orders``, keyed by order id: the answers per SKU until every SKU of
  the order has answered; then ``InventoryReserved`` (all reserved) or
  ``InventoryRejected`` (any short — the SKUs that were reserved are released).

Messages between them are ours (``extra="forbid"``): ``StockCommand`` on
``inventory.requests`` (keyed by SKU) and ``SkuAnswer`` on ``inventory.answers``
(keyed by order id).
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.events import OrderItem

REQUESTS_TOPIC = "inventory.requests"
ANSWERS_TOPIC = "inventory.answers"

State = dict[str, Any]


class StockCommand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["reserve", "release", "set"]
    sku: str = Field(min_length=1)
    qty: int = Field(ge=0)
    order_id: str | None = None
    #: the whole order, carried so the answer can be aggregated per order
    items: tuple[OrderItem, ...] = ()
    causation_id: uuid.UUID | None = None


class SkuAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    order_id: str
    sku: str
    qty: int
    decision: Literal["reserved", "rejected", "released"]
    items: tuple[OrderItem, ...]
    causation_id: uuid.UUID


def per_sku(items: tuple[OrderItem, ...]) -> dict[str, int]:
    """Quantities per SKU (an order may list one SKU twice)."""
    total: Counter[str] = Counter()
    for item in items:
        total[item.sku] += item.qty
    return dict(total)


def new_stock() -> State:
    return {"available": 0, "decisions": {}}


def apply_command(stock: State | None, cmd: StockCommand) -> tuple[State, str | None]:
    """The SKU's new state and the decision to announce (None: nothing to announce)."""
    state = {"available": (stock or new_stock())["available"],
             "decisions": dict((stock or new_stock())["decisions"])}
    if cmd.kind == "set":
        state["available"] = cmd.qty
        return state, None
    assert cmd.order_id is not None
    known = state["decisions"].get(cmd.order_id)
    if cmd.kind == "reserve":
        if known is not None:
            return state, known["decision"]  # decided before: same answer, no change
        decision = "reserved" if state["available"] >= cmd.qty else "rejected"
        if decision == "reserved":
            state["available"] -= cmd.qty
        state["decisions"][cmd.order_id] = {"decision": decision, "qty": cmd.qty}
        return state, decision
    # release: give back what this order holds, once
    if known is not None and known["decision"] == "reserved":
        state["available"] += known["qty"]
        state["decisions"][cmd.order_id] = {"decision": "released", "qty": known["qty"]}
    return state, None


def new_order(items: tuple[OrderItem, ...]) -> State:
    return {"skus": per_sku(items), "answers": {}, "outcome": None}


def record_answer(order: State | None, answer: SkuAnswer) -> tuple[State, str | None]:
    """Record one SKU's answer; return the order outcome once every SKU answered.

    The first answer per SKU wins (a replayed answer changes nothing); an order with
    an outcome is final.
    """
    state = order or new_order(answer.items)
    if state["outcome"] is not None or answer.sku in state["answers"]:
        return state, None
    answers = {**state["answers"], answer.sku: answer.decision}
    state = {**state, "answers": answers}
    if set(answers) != set(state["skus"]):
        return state, None
    outcome = "reserved" if all(d == "reserved" for d in answers.values()) else "rejected"
    return {**state, "outcome": outcome}, outcome
