"""streams.ops.reconcile.classify and repair_events: which orders disagree, and what fixes them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from streams.events import OrderItem
from streams.ops.reconcile import Mismatch, classify, prometheus_text, repair_events, report_json, report_rows, summary
from streams.ops.reconcile import OrderRow

NOW = 1000.0


def row(status: str, updated_at: float = 0.0) -> OrderRow:
    return OrderRow("o-1", "u", (OrderItem(sku="s", qty=1),), Decimal("1"), status, 0.0, updated_at)


@pytest.mark.parametrize("source,worker,kind", [
    ("CREATED", "CREATED", None),
    ("PAID", "NOTIFIED", None),
    ("CANCELLED", "CANCELLED", None),
    ("CREATED", None, "missing"),
    ("PAID", None, "missing"),
    ("PAID", "CREATED", "stuck"),
    ("PAID", "PAID", "stuck"),      # paid but never notified
    ("PAID", "NEW", "stuck"),       # only parked events reached the worker
    ("CANCELLED", "CREATED", "stuck"),
    ("CREATED", "PAID", "diverged"),
    ("CANCELLED", "PAID", "diverged"),
    ("PAID", "CANCELLED", "diverged"),
])
def test_classify_overdue(source, worker, kind):
    assert classify(row(source), worker, now=NOW, sla=60) == kind


def test_lagging_within_the_sla_is_in_flight_not_a_mismatch():
    assert classify(row("PAID", updated_at=NOW - 5), "CREATED", now=NOW, sla=60) is None
    assert classify(row("PAID", updated_at=NOW - 5), None, now=NOW, sla=60) is None
    assert classify(row("CREATED", updated_at=NOW - 5), "PAID", now=NOW, sla=60) == "diverged"


def test_repair_events_bring_the_worker_up_to_the_source():
    assert [e.type_name() for e in repair_events(row("PAID"), "-")] == ["OrderCreated", "OrderPaid"]
    assert [e.type_name() for e in repair_events(row("PAID"), "CREATED")] == ["OrderPaid"]
    assert [e.type_name() for e in repair_events(row("CANCELLED"), "NEW")] == ["OrderCreated", "OrderCancelled"]
    assert [e.type_name() for e in repair_events(row("CREATED"), "-")] == ["OrderCreated"]


def test_repair_publishes_order_created_in_the_order_services_version():
    """Once producers are on v2 and v1 is retired, a repair must not publish v1 again."""
    [v1] = repair_events(row("CREATED"), "-")
    [v2] = repair_events(row("CREATED"), "-", created_version=2, currency="SEK")
    assert (v1.topic(), v2.topic()) == ("events.order.created.v1", "events.order.created.v2")
    assert v2.currency == "SEK" and [(i.sku, i.qty, i.unit_price) for i in v2.items] == [
        (i.sku, i.qty, None) for i in v1.items]
    assert (v2.order_id, v2.user_id, v2.amount) == (v1.order_id, v1.user_id, v1.amount)


def test_report_and_prometheus_text_count_each_kind():
    ms = [Mismatch("o-1", "missing", "PAID", "-", 90), Mismatch("o-2", "stuck", "PAID", "CREATED", 70)]
    assert summary(ms, 10) == "10 orders checked: 1 missing, 1 stuck, 0 diverged"
    assert report_rows(ms)[1] == ("o-2", "stuck", "PAID", "CREATED", "70")
    doc = report_json(ms, 10, None)
    assert doc["counts"] == {"missing": 1, "stuck": 1, "diverged": 0} and doc["checked"] == 10
    text = prometheus_text(ms)
    assert 'reconciliation_mismatches{kind="missing"} 1' in text
    assert 'reconciliation_mismatches{kind="diverged"} 0' in text


def test_report_rows_escape_what_the_database_and_the_worker_say():
    rows = report_rows([Mismatch("o-\x1b[2J", "diverged", "PAID", "\x1b]0;x\x07", 1)])
    assert all(ch.isprintable() for cell in rows[0] for ch in cell), rows
