"""Event models (the wire contract), the topic registry and streams.events.decode_event."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from streams.engine.errors import DecodeError, ValidationFailed
from streams.events import (
    EVENT_BY_TOPIC,
    EVENT_TYPES,
    TOPICS,
    Event,
    NotificationSent,
    OrderCancelled,
    OrderCreated,
    OrderPaid,
    topic_for,
)
from streams.engine.records import Record
from streams.events import decode_event as decode

SEED = {"order_id": "o-1001", "user_id": "u-7", "amount": 12.5, "version": "v1"}
CREATED = {"order_id": "o-1001", "user_id": "u-7", "items": [{"sku": "s-1", "qty": 2}],
           "amount": "25.00", "version": "v1"}
CANCELLED = {"order_id": "o-1001", "reason": "customer request", "version": "v1"}


def raw(body: object) -> bytes:
    return json.dumps(body).encode()


def record(value: bytes | None, key: bytes | None = b"o-1001", topic: str = "events.order.paid.v1") -> Record:
    return Record(topic=topic, partition=0, offset=0, key=key, value=value, timestamp_ms=0)


# -- OrderPaid -------------------------------------------------------------------------


def test_order_paid_accepts_the_seed_shape_amount_as_decimal() -> None:
    event = OrderPaid.model_validate_json(raw(SEED))
    assert event.order_id == "o-1001"
    assert event.user_id == "u-7"
    assert isinstance(event.amount, Decimal)
    assert event.amount == Decimal("12.5")
    assert str(event.amount) == "12.5"  # not a binary-float expansion
    assert event.version == "v1"
    assert event.occurred_at is None
    assert isinstance(event.event_id, uuid.UUID)
    assert event.idempotency_key() == "o-1001"


def test_order_paid_amount_from_json_float_keeps_its_decimal_digits() -> None:
    event = OrderPaid.model_validate_json(raw({**SEED, "amount": 0.1}))
    assert event.amount == Decimal("0.1")


def test_order_paid_event_ids_default_to_fresh_uuids() -> None:
    a = OrderPaid.model_validate_json(raw(SEED))
    b = OrderPaid.model_validate_json(raw(SEED))
    assert a.event_id != b.event_id


def test_order_paid_optional_event_id_and_occurred_at() -> None:
    eid = uuid.uuid4()
    body = {**SEED, "event_id": str(eid), "occurred_at": "2024-05-01T12:00:00Z"}
    event = OrderPaid.model_validate_json(raw(body))
    assert event.event_id == eid
    assert event.occurred_at == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def test_order_paid_version_defaults_to_v1() -> None:
    body = {k: v for k, v in SEED.items() if k != "version"}
    assert OrderPaid.model_validate_json(raw(body)).version == "v1"


def test_order_paid_rejects_unknown_version() -> None:
    with pytest.raises(ValidationError) as info:
        OrderPaid.model_validate_json(raw({**SEED, "version": "v2"}))
    assert info.value.errors()[0]["loc"] == ("version",)


@pytest.mark.parametrize("extra", [{"currency": "EUR"}, {"amount_cents": 1250}])
def test_order_paid_rejects_extra_fields(extra: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as info:
        OrderPaid.model_validate_json(raw({**SEED, **extra}))
    assert info.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    "change",
    [{"amount": -1}, {"amount": "abc"}, {"order_id": ""}, {"user_id": ""}, {"order_id": 1001}],
)
def test_order_paid_rejects_bad_values(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        OrderPaid.model_validate_json(raw({**SEED, **change}))


@pytest.mark.parametrize("missing", ["order_id", "user_id", "amount"])
def test_order_paid_requires_its_fields(missing: str) -> None:
    body = {k: v for k, v in SEED.items() if k != missing}
    with pytest.raises(ValidationError):
        OrderPaid.model_validate_json(raw(body))


def test_events_are_frozen() -> None:
    event = OrderPaid.model_validate_json(raw(SEED))
    with pytest.raises(ValidationError):
        event.amount = Decimal("1")  # type: ignore[misc]


def test_to_bytes_round_trips_and_omits_none() -> None:
    event = OrderPaid.model_validate_json(raw(SEED))
    body = json.loads(event.to_bytes())
    assert "occurred_at" not in body
    assert OrderPaid.model_validate_json(event.to_bytes()) == event


# -- OrderCreated / OrderCancelled -----------------------------------------------------


def test_order_created_contract_shape() -> None:
    event = OrderCreated.model_validate_json(raw(CREATED))
    assert event.order_id == "o-1001"
    assert event.amount == Decimal("25.00")
    assert len(event.items) == 1
    assert event.items[0].sku == "s-1" and event.items[0].qty == 2


@pytest.mark.parametrize(
    "items", [[], [{"sku": "", "qty": 1}], [{"sku": "s-1", "qty": 0}], [{"sku": "s-1", "qty": 1, "x": 1}]]
)
def test_order_created_rejects_bad_items(items: list[object]) -> None:
    with pytest.raises(ValidationError):
        OrderCreated.model_validate_json(raw({**CREATED, "items": items}))


def test_order_cancelled_contract_shape() -> None:
    event = OrderCancelled.model_validate_json(raw(CANCELLED))
    assert event.order_id == "o-1001"
    assert event.reason == "customer request"
    minimal = OrderCancelled.model_validate_json(raw({"order_id": "o-2", "version": "v1"}))
    assert minimal.reason == ""


def test_order_cancelled_rejects_extra_fields() -> None:
    with pytest.raises(ValidationError):
        OrderCancelled.model_validate_json(raw({**CANCELLED, "user_id": "u-7"}))


# -- topic registry --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "topic"),
    [
        (OrderPaid, "events.order.paid.v1"),
        (OrderCreated, "events.order.created.v1"),
        (OrderCancelled, "events.order.cancelled.v1"),
        (NotificationSent, "events.notification.sent.v1"),
    ],
)
def test_topic_names(event_type: type[Event], topic: str) -> None:
    assert event_type.topic() == topic
    assert topic_for(event_type) == topic
    assert TOPICS[event_type] == topic
    assert EVENT_BY_TOPIC[topic] is event_type


def test_event_by_topic_is_the_inverse_of_topics() -> None:
    assert len(EVENT_BY_TOPIC) == len(TOPICS) == len(EVENT_TYPES)
    for event_type, topic in TOPICS.items():
        assert EVENT_BY_TOPIC[topic] is event_type
    for topic, event_type in EVENT_BY_TOPIC.items():
        assert TOPICS[event_type] == topic


def test_topic_for_unregistered_type() -> None:
    class Unregistered(Event):
        domain = "x"
        name = "y"
        order_id: str

    with pytest.raises(KeyError, match="Unregistered"):
        topic_for(Unregistered)


def test_notification_sent_shape() -> None:
    cause = uuid.uuid4()
    sent = NotificationSent(order_id="o-1", user_id="u-7", causation_id=cause)
    assert sent.channel == "sms"
    back = NotificationSent.model_validate_json(sent.to_bytes())
    assert back.causation_id == cause
    with pytest.raises(ValidationError):
        NotificationSent(order_id="o-1", user_id="u-7", causation_id=cause, channel="email")  # type: ignore[arg-type]


# -- streams.events.decode_event -----------------------------------------------------------


def test_decode_valid_record() -> None:
    event = decode(OrderPaid, record(raw(SEED)))
    assert isinstance(event, OrderPaid)
    assert event.amount == Decimal("12.5")


@pytest.mark.parametrize("value", [None, b""])
def test_decode_empty_value_is_decode_error(value: bytes | None) -> None:
    with pytest.raises(DecodeError) as info:
        decode(OrderPaid, record(value))
    assert info.value.dlq_reason == "decode_error"
    assert not info.value.retryable


@pytest.mark.parametrize("value", [b"not json", b"{", b"\xff\xfe", b"[1, 2]", b'"o-1001"', b"null", b"42"])
def test_decode_not_a_json_object_is_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(OrderPaid, record(value))


@pytest.mark.parametrize(
    "change",
    [{"amount": "abc"}, {"amount": [1]}, {"order_id": 1001}, {"user_id": None}, {"version": "2"},
     {"extra": 1}, {"occurred_at": "yesterday"}, {"event_id": "not-a-uuid"}],
)
def test_decode_wrong_types_is_validation_failed(change: dict[str, object]) -> None:
    body = {**SEED, **change}
    key = str(body["order_id"]).encode()
    with pytest.raises(ValidationFailed) as info:
        decode(OrderPaid, record(raw(body), key=key))
    assert info.value.dlq_reason == "validation_error"


def test_decode_missing_field_is_validation_failed() -> None:
    body = {k: v for k, v in SEED.items() if k != "amount"}
    with pytest.raises(ValidationFailed):
        decode(OrderPaid, record(raw(body)))


@pytest.mark.parametrize("items", [["s-1"], [1]])
def test_decode_nested_wrong_type_is_validation_failed(items: list[object]) -> None:
    body = {**CREATED, "items": items}
    with pytest.raises(ValidationFailed):
        decode(OrderCreated, record(raw(body), topic="events.order.created.v1"))


def test_decode_record_key_missing_is_validation_failed() -> None:
    with pytest.raises(ValidationFailed, match="idempotency key"):
        decode(OrderPaid, record(raw(SEED), key=None))


@pytest.mark.parametrize("key", [b"o-1002", b"", b"O-1001", b"o-1001 "])
def test_decode_record_key_differs_from_order_id_is_validation_failed(key: bytes) -> None:
    with pytest.raises(ValidationFailed):
        decode(OrderPaid, record(raw(SEED), key=key))


def test_decode_other_event_types() -> None:
    created = decode(OrderCreated, record(raw(CREATED), topic="events.order.created.v1"))
    assert created.items[0].qty == 2
    cancelled = decode(OrderCancelled, record(raw(CANCELLED), topic="events.order.cancelled.v1"))
    assert cancelled.reason == "customer request"
