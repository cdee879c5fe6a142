"""tables.order_state.apply: the order's state after each lifecycle event."""

from __future__ import annotations

import copy
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from streams.events import NotificationSent, OrderCancelled, OrderCreated, OrderItem, OrderPaid
from tables.order_state import apply, new_state

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def created(order_id: str = "o-1", **kw: object) -> OrderCreated:
    return OrderCreated(order_id=order_id, user_id="u-7", items=(OrderItem(sku="s-1", qty=2),),
                        amount=Decimal("25.00"), **kw)  # type: ignore[arg-type]


def paid(order_id: str = "o-1", **kw: object) -> OrderPaid:
    return OrderPaid(order_id=order_id, user_id="u-7", amount=Decimal("12.5"), **kw)  # type: ignore[arg-type]


def test_new_state() -> None:
    assert new_state("o-1") == {"order_id": "o-1", "status": "NEW", "reservation": "PENDING",
                                "version": 0, "history": []}


def test_created_gives_created_version_1() -> None:
    event = created(occurred_at=T0)
    state = apply(None, event)
    assert state is not None
    assert state["order_id"] == "o-1"
    assert state["status"] == "CREATED"
    assert state["version"] == 1
    assert state["history"] == [{"type": "OrderCreated", "event_id": str(event.event_id),
                                 "occurred_at": T0.isoformat()}]


def test_paid_after_created_gives_paid_version_2() -> None:
    s1 = apply(None, created())
    p = paid()
    s2 = apply(s1, p)
    assert s2 is not None
    assert s2["status"] == "PAID"
    assert s2["version"] == 2
    assert [h["type"] for h in s2["history"]] == ["OrderCreated", "OrderPaid"]
    assert s2["history"][1]["event_id"] == str(p.event_id)
    assert s2["history"][1]["occurred_at"] is None


def test_duplicate_event_id_changes_nothing() -> None:
    event = created()
    s1 = apply(None, event)
    assert apply(s1, event) is None
    # same event_id arriving as a re-delivered copy (a new object, same id)
    again = created(event_id=event.event_id)
    assert apply(s1, again) is None
    s2 = apply(s1, paid())
    assert apply(s2, event) is None


def test_history_grows_with_every_applied_event() -> None:
    state = None
    events = [created(), paid(), NotificationSent(order_id="o-1", user_id="u-7", causation_id=uuid.uuid4())]
    for n, event in enumerate(events, start=1):
        state = apply(state, event)
        assert state is not None
        assert state["version"] == n
        assert len(state["history"]) == n
        assert state["history"][-1]["event_id"] == str(event.event_id)
    assert state is not None and state["status"] == "NOTIFIED"


def test_apply_does_not_mutate_the_input_state() -> None:
    s1 = apply(None, created())
    assert s1 is not None
    before = copy.deepcopy(s1)
    s2 = apply(s1, paid())
    assert s1 == before
    assert s2 is not s1 and s2 is not None and s2["history"] is not s1["history"]


def test_late_event_never_moves_status_back() -> None:
    s = apply(apply(None, created()), paid())
    late_created = apply(s, created())
    assert late_created is not None
    assert late_created["status"] == "PAID"
    assert late_created["version"] == 3  # still recorded


def test_cancel_after_created() -> None:
    s = apply(apply(None, created()), OrderCancelled(order_id="o-1", reason="changed mind"))
    assert s is not None and s["status"] == "CANCELLED" and s["version"] == 2


def test_first_event_may_be_paid() -> None:
    s = apply(None, paid("o-9"))
    assert s is not None
    assert s["order_id"] == "o-9" and s["status"] == "PAID" and s["version"] == 1
