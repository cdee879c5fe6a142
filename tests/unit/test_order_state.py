"""tables.order_state: the lifecycle state machine (pure functions)."""

from __future__ import annotations

import uuid

import pytest

from streams.engine.records import Record
from streams.events import (
    InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderItem, OrderPaid,
)
from tables.order_state import Incoming, Verdict, expired_parked, judge, new_state, public_view, reachable, step, without

ITEMS = (OrderItem(sku="s-1", qty=1),)


def incoming(event, now_ms: int = 0) -> Incoming:
    rec = Record(event.topic(), 0, 7, event.order_id.encode(), event.to_bytes(), 1, {"h": b"\x00\x01"})
    return Incoming.of(event, rec, now_ms)


def created(): return OrderCreated(order_id="o-1", user_id="u", items=ITEMS, amount=1)
def paid(): return OrderPaid(order_id="o-1", user_id="u", amount=1)
def notified(): return NotificationSent(order_id="o-1", user_id="u", causation_id=uuid.uuid4())
def cancelled(): return OrderCancelled(order_id="o-1")
def reserved(): return InventoryReserved(order_id="o-1", items=ITEMS, causation_id=uuid.uuid4())
def rejected(): return InventoryRejected(order_id="o-1", items=ITEMS, causation_id=uuid.uuid4())


def run(*events):
    state, verdicts = None, []
    for e in events:
        state, outcomes = step(state, incoming(e), "o-1")
        verdicts.append([(i.type, v) for i, v in outcomes])
    return state, verdicts


def test_reachable_statuses():
    assert reachable("NEW") == {"CREATED", "PAID", "NOTIFIED", "CANCELLED"}
    assert reachable("PAID") == {"NOTIFIED"}
    assert reachable("CANCELLED") == set()


def test_in_order_lifecycle_bumps_version_per_transition():
    state, _ = run(created(), paid(), notified())
    assert state["status"] == "NOTIFIED" and state["version"] == 3
    assert [h["type"] for h in state["history"]] == ["OrderCreated", "OrderPaid", "NotificationSent"]


@pytest.mark.parametrize("order", [
    (paid, created, notified), (notified, paid, created), (notified, created, paid), (created, notified, paid),
])
def test_any_arrival_order_ends_like_the_in_order_run(order):
    in_order, _ = run(created(), paid(), notified())
    state, _ = run(*(make() for make in order))
    assert (state["status"], state["version"]) == (in_order["status"], in_order["version"])
    assert [h["type"] for h in state["history"]] == [h["type"] for h in in_order["history"]]
    assert state["parked"] == {}


def test_early_event_is_parked_then_applied_when_its_predecessor_arrives():
    state, verdicts = run(paid())
    assert verdicts == [[("OrderPaid", Verdict.PARK)]]
    assert state["version"] == 0 and list(state["parked"]) == ["OrderPaid"]
    state, outcomes = step(state, incoming(created()), "o-1")
    assert [(i.type, v) for i, v in outcomes] == [("OrderCreated", Verdict.APPLY), ("OrderPaid", Verdict.APPLY)]
    assert state["status"] == "PAID" and state["version"] == 2


def test_paid_after_cancelled_is_illegal_and_changes_nothing():
    state, _ = run(created(), cancelled())
    after, outcomes = step(state, incoming(paid()), "o-1")
    assert [(i.type, v) for i, v in outcomes] == [("OrderPaid", Verdict.ILLEGAL)]
    assert after == state


def test_cancel_after_paid_is_illegal():
    state, _ = run(created(), paid())
    assert judge(state, "OrderCancelled") is Verdict.ILLEGAL


def test_duplicate_type_is_not_applied_twice():
    state, verdicts = run(created(), paid(), paid())
    assert verdicts[-1] == [("OrderPaid", Verdict.DUPLICATE)]
    assert state["version"] == 2


def test_reservation_is_its_own_fact_and_needs_created_first():
    state, verdicts = run(reserved())
    assert verdicts == [[("InventoryReserved", Verdict.PARK)]]
    state, _ = step(state, incoming(created()), "o-1")
    assert state["reservation"] == "RESERVED" and state["status"] == "CREATED" and state["version"] == 2
    state, _ = step(state, incoming(paid()), "o-1")
    assert state["reservation"] == "RESERVED" and state["status"] == "PAID"
    _, outcomes = step(state, incoming(rejected()), "o-1")
    assert [(i.type, v) for i, v in outcomes] == [("InventoryRejected", Verdict.ILLEGAL)]


def test_parked_events_keep_their_bytes_but_not_their_headers_and_expire():
    event = paid()
    state, _ = step(None, incoming(event, now_ms=1000), "o-1")
    assert expired_parked(state, now_ms=1500, timeout_ms=1000) == []
    [expired] = expired_parked(state, now_ms=2000, timeout_ms=1000)
    record = expired.record("o-1")
    assert record.value == event.to_bytes() and record.key == b"o-1" and dict(record.headers) == {}
    assert (record.topic, record.partition, record.offset) == (event.topic(), 0, 7)
    assert without(state, {expired.type})["parked"] == {}


def test_at_most_one_parked_event_per_type():
    """Regression: four 5 MB OrderPaid with different event ids were all parked in one
    state (a 20 MB changelog record, then a crash loop)."""
    state, _ = step(None, incoming(paid()), "o-1")
    for _ in range(3):
        state, outcomes = step(state, incoming(paid()), "o-1")
        assert [(i.type, v) for i, v in outcomes] == [("OrderPaid", Verdict.DUPLICATE)]
    assert list(state["parked"]) == ["OrderPaid"]


def test_public_view_shows_no_bytes_or_headers():
    state, _ = step(None, incoming(paid(), now_ms=5), "o-1")
    view = public_view(state)
    assert set(view) == {"order_id", "status", "reservation", "version", "history", "parked"}
    assert view["parked"] == [{"type": "OrderPaid", "event_id": state["parked"]["OrderPaid"]["id"], "parked_at_ms": 5}]
    assert all(set(p) == {"type", "event_id", "parked_at_ms"} for p in view["parked"])


def test_new_state_shape():
    assert new_state("o-9") == {"order_id": "o-9", "status": "NEW", "reservation": "PENDING",
                                "version": 0, "history": [], "parked": {}}
