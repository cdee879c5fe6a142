"""Versions of an event: golden samples of every version read as the newest model,
the v1 → v2 chain of OrderCreated, and what a disagreeing or unknown version costs
(issue 22, items 1, 2 and 4)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from agents.inventory import InventoryService
from agents.order_state import OrderStateService
from streams.engine.errors import DecodeError, ValidationFailed
from streams.engine.records import Record
from streams.events import (
    EVENT_TYPES, NEWEST, UPCASTERS, OrderCreated, OrderCreatedV2, OrderPaid, UnknownVersion, UpcastContext,
    ce_type, decode_newest, upcast,
)
from streams.events.schemas import schema_name

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
BY_NAME = {schema_name(t): t for t in EVENT_TYPES}
CTX = UpcastContext(default_currency="SEK")
V1, V2 = OrderCreated.topic(), OrderCreatedV2.topic()


def rec(topic: str, body: dict | bytes, key: str | None = None, headers: dict[str, bytes] | None = None) -> Record:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    if key is None and isinstance(body, dict):
        key = body["order_id"]
    return Record(topic=topic, partition=0, offset=0, key=key.encode() if key else None, value=value,
                  timestamp_ms=0, **({"headers": headers} if headers else {}))


def samples() -> list[tuple[str, Path]]:
    return sorted((d.name, f) for d in GOLDEN.iterdir() if d.is_dir() for f in d.glob("*.json"))


# -- golden samples ---------------------------------------------------------------------------


def test_every_version_of_every_event_has_golden_samples_and_no_sample_lacks_a_version():
    dirs = {d.name for d in GOLDEN.iterdir() if d.is_dir()}
    assert dirs == set(BY_NAME), f"golden dirs without a model: {dirs - set(BY_NAME)}; " \
                                 f"versions without samples: {set(BY_NAME) - dirs}"
    assert all(any((GOLDEN / d).glob("*.json")) for d in dirs)


@pytest.mark.parametrize("version,path", samples(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_golden_sample_upcasts_to_the_newest_model_and_validates(version, path):
    event_type = BY_NAME[version]
    body = json.loads(path.read_text())
    event = decode_newest(event_type.topic(), rec(event_type.topic(), body), CTX)
    newest = NEWEST[(event_type.domain, event_type.name)]
    assert type(event) is newest
    assert newest.model_validate_json(event.to_bytes()) == event  # what a v-newest producer could send
    assert event.order_id == body["order_id"]
    if "event_id" in body:
        assert str(event.event_id) == body["event_id"]  # identity survives every step


def test_a_v1_order_reads_as_v2_with_the_default_currency_and_no_unit_prices():
    body = json.loads((GOLDEN / "order.created.v1" / "full.json").read_text())
    event = decode_newest(V1, rec(V1, body), CTX)
    assert isinstance(event, OrderCreatedV2) and event.version == "v2"
    assert event.currency == "SEK" and event.amount == Decimal("99.5")
    assert [(i.sku, i.qty, i.unit_price) for i in event.items] == [("s-1", 1, None), ("s-2", 3, None), ("s-1", 1, None)]
    assert event.occurred_at is not None and event.occurred_at.isoformat() == "2026-03-01T12:00:00+00:00"
    assert event.type_name() == "OrderCreated" == OrderCreated.type_name()


def test_the_chain_is_one_function_per_step_and_the_newest_is_not_touched():
    assert UPCASTERS[("order", "created", 1)].__name__ == "order_created_v1_to_v2"
    v2 = OrderCreatedV2(order_id="o-1", user_id="u-1", items=[{"sku": "s", "qty": 1}], amount="1", currency="EUR")
    assert upcast(v2, CTX) is v2
    paid = OrderPaid(order_id="o-1", user_id="u-1", amount="1")
    assert upcast(paid, CTX) is paid


def test_an_upcaster_cannot_produce_what_the_newest_model_refuses():
    v1 = OrderCreated(order_id="o-1", user_id="u-1", items=[{"sku": "s", "qty": 1}], amount="1")
    with pytest.raises(ValidationFailed, match="upcast to v2: currency"):
        upcast(v1, UpcastContext(default_currency="euro"))


# -- versions that disagree, versions we do not know -------------------------------------------


V1_BODY = {"order_id": "o-1", "user_id": "u-1", "items": [{"sku": "s-1", "qty": 1}], "amount": "5", "version": "v1"}
V2_BODY = {**V1_BODY, "version": "v2", "currency": "EUR"}


@pytest.mark.parametrize("topic,body,headers,reason,message", [
    (V1, {**V1_BODY, "version": "v9"}, None, "unknown_version", "order.created version v9 is unknown here (known: v1, v2)"),
    (V2, {**V2_BODY, "version": "v9"}, None, "unknown_version", "version v9 is unknown"),
    (V1, V2_BODY, None, "validation_error", "payload version v2 on the topic of order.created v1"),
    (V2, V1_BODY, None, "validation_error", "payload version v1 on the topic of order.created v2"),
    (V1, V1_BODY, {"ce_type": b"order.created.v2"}, "validation_error", "disagrees with the topic's 'order.created.v1'"),
    (V2, V2_BODY, {"ce_type": b"order.created.v1"}, "validation_error", "disagrees"),
    (V2, V2_BODY, {"ce_type": b"order.paid.v1"}, "validation_error", "disagrees"),
    (V1, V1_BODY, {"ce_type": b"order.created.v9"}, "unknown_version", "version unknown here"),
    (OrderPaid.topic(), {"order_id": "o-1", "user_id": "u", "amount": 1, "version": "v2"}, None,
     "unknown_version", "order.paid version v2 is unknown here (known: v1)"),
])
def test_a_record_whose_topic_payload_and_header_disagree_is_dead_lettered(topic, body, headers, reason, message):
    with pytest.raises(ValidationFailed) as info:
        decode_newest(topic, rec(topic, body, headers=headers), CTX)
    assert info.value.dlq_reason == reason
    assert message in str(info.value)
    assert isinstance(info.value, UnknownVersion) == (reason == "unknown_version")


def test_an_agreeing_ce_type_is_accepted_and_a_malformed_version_stays_a_validation_error():
    assert decode_newest(V2, rec(V2, V2_BODY, headers={"ce_type": ce_type(OrderCreatedV2).encode()}), CTX).currency == "EUR"
    for bad in ("2", 2, None, "v0", "V2"):
        with pytest.raises(ValidationFailed) as info:
            decode_newest(V1, rec(V1, {**V1_BODY, "version": bad}), CTX)
        assert info.value.dlq_reason == "validation_error", bad
    with pytest.raises(DecodeError):
        decode_newest(V2, rec(V2, b"[1]", key="o-1"), CTX)


# -- consumers ---------------------------------------------------------------------------------


def test_consumers_read_both_versions_as_v2_and_share_one_decoding_per_record():
    inventory = InventoryService(caller=None, search_url="", decision_ttl=60, default_currency="SEK")  # type: ignore[arg-type]
    state = OrderStateService(park_timeout=60, default_currency="SEK")
    for topic, body in ((V1, V1_BODY), (V2, V2_BODY)):
        r = rec(topic, body)
        a, b = inventory.decode(topic, r), state.decode(topic, r)
        assert isinstance(a, OrderCreatedV2) and a.model_dump(exclude={"event_id"}) == b.model_dump(exclude={"event_id"})
        assert inventory.decoder(topic) == state.decoder(topic)  # the pipeline's memo key
        assert inventory.type_of(topic) == state.type_of(topic) == "OrderCreated"
    assert inventory.decode(V1, rec(V1, V1_BODY)).currency == "SEK"


def test_a_gap_in_the_chain_stops_start_up_with_one_line(monkeypatch, capsys):
    monkeypatch.delitem(UPCASTERS, ("order", "created", 1))
    for build in (lambda: OrderStateService(park_timeout=60),
                  lambda: InventoryService(caller=None, search_url="", decision_ttl=60)):  # type: ignore[arg-type]
        with pytest.raises(SystemExit) as info:
            build()
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err == "event versions: order.created: v2 has no upcaster from v1 " \
                      "(add UPCASTERS[('order', 'created', 1)])\n"


def test_event_ids_of_upcast_events_are_the_records():
    eid = uuid.uuid4()
    event = decode_newest(V1, rec(V1, {**V1_BODY, "event_id": str(eid)}), CTX)
    assert event.event_id == eid
