"""agents.order_state.OrderStateService on the engine, with fakes of its ports."""

from __future__ import annotations

import json

from agents.order_state import OrderStateService
from streams.engine import headers as H
from streams.engine.pipeline import Pipeline
from streams.engine.records import Record
from streams.engine.routing import RetryPolicy
from streams.events import NotificationSent, OrderCreated, OrderPaid
from streams.metrics import Metrics
from streams.registry import topics_written
from harness.events import created, notification_sent, paid
from streams.engine.testing import NOW, Clock, FakePublisher, MemoryStore

DLQ = "order-state.dlq"


def harness(park_timeout: float = 1.0) -> tuple[Pipeline, FakePublisher, MemoryStore, Clock]:
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    clock = Clock(NOW)
    pipeline = Pipeline(OrderStateService(park_timeout=park_timeout), publisher=publisher, store=store,
                        counts=Metrics(), policy=RetryPolicy((1.0,)),
                        allowed=(topics_written(1) | {"order-state-changelog"}).__contains__,
                        ttl_ms=3_600_000, clock=clock, monotonic=clock, send_backoff=0.001)
    return pipeline, publisher, store, clock


def record(topic: str, kv: tuple[bytes, bytes], offset: int = 0) -> Record:
    return Record(topic, 0, offset, kv[0], kv[1], int(NOW * 1000))


async def test_two_parked_events_due_in_one_tick_are_dead_lettered_once_each() -> None:
    """Regression: both index entries of one order fell due in the same tick and each
    dead-lettered both parked events (4 letters for 2 events)."""
    pipeline, publisher, store, clock = harness()
    await pipeline.process([record(OrderPaid.topic(), paid("o-1")),
                            record(NotificationSent.topic(), notification_sent("o-1"))])
    clock.now += 5
    await pipeline.maintain([0])
    letters = publisher.to(DLQ)
    assert sorted(dict(m.headers)[H.SOURCE_TOPIC] for m in letters) == sorted(
        [OrderPaid.topic().encode(), NotificationSent.topic().encode()])
    assert all(dict(m.headers)[H.DLQ_REASON] == b"out_of_order_timeout" for m in letters)
    state = json.loads(store.table("order-state", 0)[b"o-1"])
    assert state["parked"] == {}
    await pipeline.maintain([0])
    assert len(publisher.to(DLQ)) == 2


async def test_parked_event_applied_before_its_timeout_is_not_dead_lettered() -> None:
    pipeline, publisher, store, clock = harness()
    await pipeline.process([record(OrderPaid.topic(), paid("o-1"))])
    await pipeline.process([record(OrderCreated.topic(), created("o-1"))])
    clock.now += 5
    await pipeline.maintain([0])
    assert publisher.to(DLQ) == []
    assert json.loads(store.table("order-state", 0)[b"o-1"])["status"] == "PAID"


async def test_a_state_over_the_size_limit_dead_letters_its_event_as_too_large() -> None:
    pipeline, publisher, store, clock = harness()
    store.max_value_bytes = 200
    await pipeline.process([record(OrderPaid.topic(), paid("o-1"))])
    [letter] = publisher.to(DLQ)
    assert dict(letter.headers)[H.DLQ_REASON] == b"too_large"
    assert b"o-1" not in store.table("order-state", 0)


async def test_an_inventory_answer_without_a_known_kind_is_a_validation_error() -> None:
    """A JSON object that does not fit the schema is validation_error (found by the
    differential test: `{}` and `{"kind": "bogus"}` were decode_error)."""
    from agents.inventory import InventoryService
    from streams.engine.errors import DecodeError, ValidationFailed
    from agents.rpc import BestEffortCaller

    service = InventoryService(BestEffortCaller(Metrics().rpc_calls, timeout=1, max_in_flight=1),
                               search_url="", decision_ttl=60)
    for value, error in [(b"{}", ValidationFailed), (b'{"kind":"bogus"}', ValidationFailed),
                         (b"[1, 2]", DecodeError), (b"null", DecodeError), (b"{bad", DecodeError)]:
        try:
            service.decode("inventory.answers", Record("inventory.answers", 0, 0, b"o-1", value, 0))
        except error:
            continue
        raise AssertionError(f"{value!r} was not a {error.__name__}")
