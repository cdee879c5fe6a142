"""The ``order-state`` service: runs :mod:`tables.order_state` over the lifecycle events.

Per event, in arrival order, through the batch's transaction on the ``order-state``
table partition of the record:

1. judge it against the order's state (apply, duplicate, park, illegal), then the
   order's parked events;
2. an illegal event fails (``order-state.dlq``, ``illegal_transition``); a parked
   event that turns out illegal once its predecessor came is dead-lettered from its
   stored record;
3. the new state is written (a state over ``STATE_MAX_BYTES`` fails its event as
   ``too_large``), and a newly parked event is put on the time index at the time it
   was parked.

Time is the partition's stream time (:mod:`streams.engine.streamtime`): an event is
parked at its partition's decision time and times out when that time is
``PARK_TIMEOUT`` later — never by the worker's wall clock, so a worker restarted with
its clock stepped does not dead-letter what is parked (on a partition that receives
nothing, the decision time moves with the monotonic clock).

Maintenance finds due index entries (cost: the due entries, not the parked orders —
with 80,000 parked orders the old once-a-second scan took 1.0–1.6 s), dead-letters
parked events older than ``PARK_TIMEOUT`` (``out_of_order_timeout``) and writes the
states without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from streams.engine.errors import IllegalTransition, ParkTimeout, TooLarge
from streams.engine.pipeline import DUPLICATE, MAINTENANCE_LIMIT, PARKED, SUCCESS, Batch, Item
from streams.engine.ports import INDEX_PREFIX, Indexer, index_key
from streams.engine.records import Record
from streams.events import (
    EVENT_BY_TOPIC, InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated,
    OrderCreatedV2, OrderPaid, UpcastContext, decode_newest, require_whole_chains,
)
from streams.engine.topology import ServiceSpec
from tables.order_state import TABLE, Incoming, State, Verdict, expired_parked, step, without

#: A parked event's JSON text may be at most this long; a longer one is dead-lettered
#: (``too_large``) instead of being kept in the order's state.
MAX_PARKED_VALUE = 16 * 1024


def state_name(state: State | None) -> str:
    if not state:
        return "NEW"
    return f"{state['status']}/{state['reservation']}"


SPEC = ServiceSpec(
    name="order-state",
    sources=tuple(t.topic() for t in (
        OrderCreated, OrderCreatedV2, OrderPaid, OrderCancelled, NotificationSent, InventoryReserved,
        InventoryRejected,
    )),
    tables=(TABLE,),
    description="the order lifecycle state machine (GET /orders/{id})",
)


class OrderStateService:
    spec = SPEC
    dedup_table = None  # the state machine itself knows what it has applied

    def __init__(self, *, park_timeout: float, default_currency: str = "EUR") -> None:
        require_whole_chains()  # a gap stops start-up (one line) instead of dead-lettering a version
        self.park_timeout_ms = int(park_timeout * 1000)
        self.upcast = UpcastContext(default_currency=default_currency)

    def type_of(self, topic: str) -> str:
        event_type = EVENT_BY_TOPIC.get(topic)
        return event_type.type_name() if event_type else "unknown"

    def decoder(self, topic: str) -> Any:
        return EVENT_BY_TOPIC[topic]

    def decode(self, topic: str, record: Record) -> Any:
        """Every version of an event arrives as its newest model (``OrderCreated`` v1 and
        v2 both as v2); the state machine keys on the order id and the event's type,
        which no version changes, so one order created on both topics is applied once."""
        return decode_newest(topic, record, self.upcast)

    async def handle(self, items: Sequence[Item], batch: Batch) -> None:
        by_partition: dict[int, list[bytes]] = {}
        for item in items:
            by_partition.setdefault(item.partition, []).append(item.key)
        for partition, keys in by_partition.items():  # one multi-get per partition
            batch.tx(TABLE, partition).get_many(keys)
        for item in items:
            try:
                self._one(item, batch)
            except Exception as exc:  # TooLarge from the transaction, or a bug: routed
                item.fail(exc)

    def _one(self, item: Item, batch: Batch) -> None:
        order_id = item.message.idempotency_key()
        key = item.key
        tx = batch.tx(TABLE, item.partition)
        raw = tx.get(key)
        old: State | None = orjson.loads(raw) if raw else None
        now = batch.time(item.partition)
        incoming = Incoming.of(item.message, item.record, now)
        new, outcomes = step(old, incoming, order_id)
        verdict = outcomes[0][1]
        if verdict is Verdict.PARK and len(incoming.value) > MAX_PARKED_VALUE:
            raise TooLarge(f"{incoming.type} of {len(incoming.value)} bytes cannot be parked "
                           f"(limit {MAX_PARKED_VALUE})")
        if verdict is Verdict.APPLY or verdict is Verdict.PARK:  # a duplicate or illegal event changes nothing
            tx.set(key, orjson.dumps(new))  # raises TooLarge over STATE_MAX_BYTES
        if verdict is Verdict.PARK:
            # Indexed by when it was parked (so a changed PARK_TIMEOUT applies to it too);
            # local only: recovery rebuilds this index from the states' parked events.
            tx.schedule(now, key, durable=False)
            item.succeed(status=PARKED)
        elif verdict is Verdict.ILLEGAL:
            item.fail(IllegalTransition(f"{incoming.type} not allowed in {state_name(old)}"))
        else:
            item.succeed(status=SUCCESS if verdict is Verdict.APPLY else DUPLICATE)
        for waiting, v in outcomes[1:]:  # parked events judged again
            if v is Verdict.ILLEGAL:
                batch.dead_letter(waiting.record(order_id),
                                  IllegalTransition(f"{waiting.type} not allowed in {state_name(new)}"),
                                  waiting.type)
            else:
                batch.count(waiting.type, SUCCESS if v is Verdict.APPLY else DUPLICATE)

    def indexers(self) -> dict[str, Indexer]:
        return {TABLE: Indexer(self.index_entries)}

    def index_entries(self, key: bytes, value: bytes) -> list[bytes]:
        """The time-index entries of a state (one per parked event, at its parking time),
        rebuilt by recovery: they are written locally only, never to the changelog."""
        if key.startswith(INDEX_PREFIX) or b'"since"' not in value:
            return []
        try:
            parked = orjson.loads(value).get("parked") or {}
            return [index_key(p["since"], key) for p in parked.values()]
        except (ValueError, AttributeError, KeyError, TypeError):
            return []

    async def maintain(self, batch: Batch, partitions: Sequence[int]) -> None:
        """Dead-letter parked events older than ``PARK_TIMEOUT`` in their partition's
        stream time, found by the time index."""
        for partition in partitions:
            now = batch.known_time(partition)
            if now is None:
                continue  # no stream time here yet: nothing was parked by it
            tx = batch.tx(TABLE, partition)
            due = tx.due(now - self.park_timeout_ms, MAINTENANCE_LIMIT)
            tx.get_many(key for _, key in due)  # one multi-get; tx.get below sees this tick's writes
            for at, key in due:
                tx.unschedule(at, key)
                raw = tx.get(key)  # an order with two entries due at once is judged on its new state
                if raw is None:
                    continue
                state: State = orjson.loads(raw)
                expired = expired_parked(state, now, self.park_timeout_ms)
                for waiting in expired:
                    batch.dead_letter(waiting.record(state["order_id"]), ParkTimeout(
                        f"{waiting.type} waited {(now - waiting.parked_at_ms) / 1000:.1f}s for its "
                        f"predecessor in {state_name(state)}"), waiting.type)
                if expired:
                    tx.set(key, orjson.dumps(without(state, {w.type for w in expired})))
