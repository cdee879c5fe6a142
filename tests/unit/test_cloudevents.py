"""CloudEvents Kafka binding headers (binary mode) on what the project produces, read
back by the CloudEvents SDK (issue 22, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from streams.events import (
    EVENT_TYPES,
    ORDERS_SOURCE,
    OrderCreatedV2,
    ce_dataschema,
    ce_headers,
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


# -- internal records: inventory's commands and answers, seed-stock, the redrive ledger ----


def _inventory():
    from agents.inventory import InventoryService
    from streams.engine.pipeline import Pipeline
    from streams.engine.routing import RetryPolicy
    from streams.engine.testing import NOW, Clock, FakePublisher, MemoryStore
    from streams.metrics import Metrics
    from streams.registry import topics_written

    publisher = FakePublisher()
    clock = Clock(NOW)
    service = InventoryService(caller=None, search_url="", decision_ttl=60.0)  # type: ignore[arg-type]
    allowed = topics_written(1) | {"inventory-stock-changelog", "inventory-orders-changelog"}
    pipeline = Pipeline(service, publisher=publisher, store=MemoryStore(publisher), counts=Metrics(),
                        policy=RetryPolicy((1.0,)), allowed=allowed.__contains__, ttl_ms=60_000, clock=clock,
                        monotonic=clock, send_backoff=0.001)
    return pipeline, publisher


T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z: the records' time (the test clock's now)


def _created(order_id: str, skus: dict[str, int], offset: int = 0):
    from streams.engine.records import Record

    body = {"order_id": order_id, "user_id": "u-1", "items": [{"sku": s, "qty": q} for s, q in skus.items()],
            "amount": "5", "currency": "EUR", "version": "v2"}
    return Record(OrderCreatedV2.topic(), 0, offset, order_id.encode(), json.dumps(body).encode(), T0)


def _as_records(outgoing, offset: int = 0):
    from streams.engine.records import Record

    return [Record(m.topic, 0, offset + i, m.key, m.value, T0, dict(m.headers), m.headers)
            for i, m in enumerate(outgoing)]


async def _one_order_through_inventory():
    """One order of two SKUs, s-1 in stock and s-2 not: reserve commands, the
    expectation, the answers, then a release of s-1 (every internal kind inventory writes)."""
    from agents.inventory import INVENTORY_ANSWERS, INVENTORY_REQUESTS
    from streams.engine.records import Record
    from streams.ops.commands import seed_stock_records

    pipeline, publisher = _inventory()
    seeds = [Record(INVENTORY_REQUESTS, 0, i, k, v, T0, dict(h), tuple(h))
             for i, (k, v, h) in enumerate(seed_stock_records({"s-1": 5}, T0))]
    assert await pipeline.process(seeds) == {"success": 1}
    assert await pipeline.process([_created("o-1", {"s-1": 2, "s-2": 1})]) == {"success": 1}
    first = list(publisher.sent)
    assert await pipeline.process(_as_records(publisher.to(INVENTORY_REQUESTS), 10)) == {"success": 2}
    assert await pipeline.process(_as_records(publisher.to(INVENTORY_ANSWERS), 10)) == {"success": 3}
    return pipeline, publisher, first


async def test_the_sdk_reads_every_internal_record_inventory_writes():
    from agents.inventory import CE_SOURCE, INVENTORY_ANSWERS, INVENTORY_REQUESTS

    _, publisher, _ = await _one_order_through_inventory()
    seen = {}
    for m in publisher.to(INVENTORY_REQUESTS) + publisher.to(INVENTORY_ANSWERS):
        ce = read(m.headers, m.key, m.value)
        data = ce.get_data()
        seen[(ce.get_type(), data["kind"], data.get("sku"))] = ce.get_id()
        assert ce.get_specversion() == "1.0" and ce.get_source() == CE_SOURCE
        assert ce.get_time().isoformat() == "2023-11-14T22:13:20+00:00"  # the causing record's time
        assert ce.get_dataschema() == f"schemas/{ce.get_type()}.json" and (ROOT / ce.get_dataschema()).is_file()
        assert ce.get_datacontenttype() == "application/json" and data["order_id"] == "o-1"
    assert set(seen) == {
        ("inventory.command.v1", "reserve", "s-1"), ("inventory.command.v1", "reserve", "s-2"),
        ("inventory.expected.v1", "expect", None), ("inventory.answer.v1", "answer", "s-1"),
        ("inventory.answer.v1", "answer", "s-2"), ("inventory.command.v1", "release", "s-1")}
    assert len(set(seen.values())) == 6  # one id per record


async def test_internal_ids_are_the_same_when_an_order_is_handled_again():
    """ce_id names the record, not the send: inventory handling the same OrderCreated
    again (a replay after a crash, before its marker was committed) writes the same ids."""
    def ids(sent):
        return [dict(m.headers)["ce_id"] for m in sent if m.topic in ("inventory.requests", "inventory.answers")]

    _, publisher, first = await _one_order_through_inventory()
    _, again, _ = await _one_order_through_inventory()
    assert len(set(ids(first))) == 3 and len(set(ids(publisher.sent))) == 6
    assert ids(publisher.sent) == ids(again.sent)


def test_the_sdk_reads_seed_stocks_records():
    from streams.ops.commands import SEED_STOCK_SOURCE, seed_stock_records

    records = seed_stock_records({"s-1": 5, "s-2": 0}, T0)
    ids = set()
    for key, value, headers in records:
        ce = read(headers, key, value)
        assert ce.get_type() == "inventory.command.v1" and ce.get_source() == SEED_STOCK_SOURCE
        assert ce.get_dataschema() == "schemas/inventory.command.v1.json"
        assert ce.get_time().isoformat() == "2023-11-14T22:13:20+00:00"
        assert ce.get_data()["kind"] == "set" and ce.get_data()["sku"] == key.decode()
        ids.add(ce.get_id())
    assert len(ids) == 2
    # a new run is a new command: new ids (the same SKU may be set to 5, 3, then 5 again)
    assert ids.isdisjoint(read(h, k, v).get_id() for k, v, h in seed_stock_records({"s-1": 5, "s-2": 0}, T0))


def test_the_sdk_reads_the_redrive_ledgers_records():
    from streams.ops.dlq import (
        LEDGER_SOURCE,
        RedriveClaim,
        RedriveDone,
        claim_id,
        ledger_headers,
        ledger_kind,
    )

    letter = "inventory.dlq:0:7"
    claim = json.dumps({"claim": "a1b2c3d4e5f60718", "at": T0}).encode()
    done = json.dumps({"to": "inventory.requests", "at": T0 + 1}).encode()
    c = read(ledger_headers("claim", "a1b2c3d4e5f60718", letter, T0), letter.encode(), claim)
    d = read(ledger_headers("done", "a1b2c3d4e5f60718", letter, T0 + 1), letter.encode(), done)
    assert (c.get_type(), d.get_type()) == ("dlq.claim.v1", "dlq.redriven.v1")
    assert c.get_source() == d.get_source() == LEDGER_SOURCE
    assert c.get_id() == claim_id("a1b2c3d4e5f60718", letter) != d.get_id()
    assert d.get_id() == read(ledger_headers("done", "a1b2c3d4e5f60718", letter, T0 + 9), b"", done).get_id()
    assert (ROOT / c.get_dataschema()).is_file() and (ROOT / d.get_dataschema()).is_file()
    RedriveClaim.model_validate_json(claim)  # what Claims writes is what the schema says
    RedriveDone.model_validate_json(done)
    assert ledger_kind(claim, ledger_headers("claim", "r", letter, T0)) == "claim"
    assert ledger_kind(done, ledger_headers("done", "r", letter, T0)) == "done"


def test_a_ledger_record_whose_ce_type_names_another_kind_is_ignored():
    """The value says what a ledger record is; a forged ce_type makes it count as nothing
    (Claims and RedrivenIds both read through ledger_kind): no redrive, no claim."""
    from streams.ops.dlq import ledger_kind

    claim = b'{"claim": "r1", "at": 1}'
    done = b'{"to": "events.order.paid.v1", "at": 1}'
    assert ledger_kind(done, [("ce_type", b"dlq.claim.v1")]) == "ignored"
    assert ledger_kind(claim, [("ce_type", b"dlq.redriven.v1")]) == "ignored"
    assert ledger_kind(done, [("ce_type", b"order.paid.v1")]) == "ignored"
    assert ledger_kind(done, [("x-other", b"1")]) == "done"  # no ce_type: read by its value, as before


@pytest.mark.parametrize("topic, index, forged, reason", [
    ("inventory.requests", 0, b"inventory.answer.v1", "validation_error"),
    ("inventory.requests", 0, b"order.created.v2", "validation_error"),
    ("inventory.requests", 0, b"inventory.command.v7", "unknown_version"),
    ("inventory.answers", 0, b"inventory.answer.v1", "validation_error"),   # the expectation as an answer
    ("inventory.answers", 1, b"inventory.expected.v1", "validation_error"),  # an answer as the expectation
])
async def test_a_forged_ce_type_on_an_internal_record_is_a_dead_letter_and_nothing_else(topic, index, forged, reason):
    from streams.engine.headers import DLQ_REASON
    from streams.engine.records import Record

    pipeline, publisher, _ = await _one_order_through_inventory()
    if topic == "inventory.requests":  # a reserve command of another order, as sent, with its ce_type forged
        [sent] = [m for m in publisher.to(topic) if b'"reserve"' in m.value and m.key == b"s-1"]
        value = sent.value.replace(b"o-1", b"o-2")
    else:
        sent = publisher.to(topic)[index]
        value = sent.value.replace(b"o-1", b"o-2")
    headers = tuple((k, forged if k == "ce_type" else v) for k, v in sent.headers)
    before = len(publisher.sent)

    record = Record(topic, 0, 99, sent.key.replace(b"o-1", b"o-2"), value, T0, dict(headers), headers)
    assert await pipeline.process([record]) == {"dead_letter": 1}
    [letter] = publisher.sent[before:]  # nothing else: no answer, no stock change, no changelog record
    assert letter.topic == "inventory.dlq" and dict(letter.headers)[DLQ_REASON] == reason.encode()
    # the same record with its true ce_type is handled
    true = Record(topic, 0, 100, record.key, value, T0, dict(sent.headers), sent.headers)
    assert await pipeline.process([true]) == {"success": 1}
