"""CloudEvents Kafka binding headers (binary mode) on what the project produces, read
back by the CloudEvents SDK (issue 22, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from streams.events import (
    ORDERS_SOURCE, EVENT_TYPES, OrderCreatedV2, ce_dataschema, ce_headers,
)
from streams.events.schemas import ROOT, schema_path
from tests.unit.test_orders_api import open_ctx


def read(headers, key: bytes, value: bytes):
    return from_binary_event(KafkaMessage(headers=dict(headers), key=key, value=value))


def test_the_sdk_reads_an_events_headers_and_value():
    event = OrderCreatedV2(order_id="o-1", user_id="u-1", items=[{"sku": "s-1", "qty": 1}], amount="2.5",
                           currency="EUR", occurred_at="2026-03-01T12:00:00Z")
    ce = read(ce_headers(event, ORDERS_SOURCE), b"o-1", event.to_bytes())
    assert ce.get_specversion() == "1.0" and ce.get_id() == str(event.event_id)
    assert ce.get_type() == "order.created.v2" and ce.get_source() == ORDERS_SOURCE
    assert ce.get_time().isoformat() == "2026-03-01T12:00:00+00:00"
    assert ce.get_dataschema() == "schemas/order.created.v2.json"
    assert ce.get_datacontenttype() == "application/json"
    assert ce.get_data()["currency"] == "EUR"


def test_every_dataschema_is_a_committed_schema():
    for t in EVENT_TYPES:
        assert ce_dataschema(t) == schema_path(t) and (ROOT / ce_dataschema(t)).is_file()
        assert json.loads((ROOT / ce_dataschema(t)).read_text())["$id"] == ce_dataschema(t)


async def test_the_order_services_outbox_rows_carry_them(tmp_path: Path):
    async with open_ctx(tmp_path / "o.db", order_events_version=2) as ctx:  # type: ignore[arg-type]
        order_id = await ctx.create()
        resp = await ctx.client.post(f"/orders/{order_id}/pay")
        assert resp.status == 202
        async with ctx.db.transaction() as tx:
            rows = await tx.fetchall("SELECT id, topic, key, payload, headers FROM outbox ORDER BY position")
    assert [r[1] for r in rows] == ["events.order.created.v2", "events.order.paid.v1"]
    for event_id, topic, key, payload, headers in rows:
        ce = read([(k, v.encode()) for k, v in json.loads(headers)], bytes(key), bytes(payload))
        assert ce.get_id() == event_id and ce.get_source() == ORDERS_SOURCE
        assert "events." + ce.get_type() == topic
        assert ce.get_data()["order_id"] == order_id


async def test_the_events_reconcile_repair_re_publishes_carry_them(tmp_path: Path):
    from streams.ops.reconcile import REPAIR_SOURCE, Mismatch, repair

    async with open_ctx(tmp_path / "o.db") as ctx:  # type: ignore[arg-type]
        order_id = await ctx.create()
        assert (await ctx.client.post(f"/orders/{order_id}/pay")).status == 202
        async with ctx.db.transaction() as tx:
            before = len(await tx.fetchall("SELECT id FROM outbox"))
        assert await repair(ctx.db, [Mismatch(order_id, "missing", "PAID", "-", 120.0)]) == 2
        async with ctx.db.transaction() as tx:
            rows = await tx.fetchall("SELECT id, topic, key, payload, headers FROM outbox ORDER BY position")
    assert [r[1] for r in rows[before:]] == ["events.order.created.v1", "events.order.paid.v1"]
    for event_id, topic, key, payload, headers in rows[before:]:
        pairs = json.loads(headers)
        ce = read([(k, v.encode()) for k, v in pairs], bytes(key), bytes(payload))
        assert ce.get_id() == event_id and ce.get_source() == REPAIR_SOURCE and "events." + ce.get_type() == topic
        assert ["x-repair", "reconcile"] in pairs
