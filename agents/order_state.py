"""The ``order-state`` service: runs :mod:`tables.order_state` over the lifecycle events.

Per event, on Faust's normal table path (``table[key] = state``; Faust flushes the
producer — changelog records included — before it commits offsets):

1. decode; failure → ``order-state.dlq`` (``decode_error`` / ``validation_error``);
2. judge it against the order's state (apply, duplicate, park, illegal), then the
   order's parked events;
3. send the illegal ones to ``order-state.dlq`` and await the acks;
4. write the new state.

A timer dead-letters parked events older than ``PARK_TIMEOUT``
(``out_of_order_timeout``) and removes them from the state; it writes the table
partition explicitly, under the same lock as the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from faust.types import TP

from streams.batching import to_record
from streams.errors import IllegalTransition, ParkTimeout, StreamsError
from streams.events import EVENT_BY_TOPIC
from streams.metrics import DEAD_LETTER, DUPLICATE, SUCCESS, Metrics
from streams.pipeline import Publisher, Record, dead_letter, decode, send_until_acked
from tables.dedup import FAUST_OFFSET_KEY
from tables.order_state import Incoming, State, Verdict, expired_parked, step, without

log = logging.getLogger(__name__)

SERVICE = "order-state"
PARKED = "parked"


class OrderStateService:
    name = SERVICE

    def __init__(
        self, app: Any, table: Any, publisher: Publisher, metrics: Metrics,
        clock: Callable[[], float], park_timeout: float,
    ) -> None:
        self.app = app
        self.table = table
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.park_timeout_ms = int(park_timeout * 1000)
        self.lock = asyncio.Lock()
        #: (partition, key) of orders with parked events; rebuilt by a scan after
        #: every rebalance (``_indexed_generation``), kept up to date by the agent.
        self.parked_keys: set[tuple[int, bytes]] = set()
        self._indexed_generation = -1

    def _count(self, type_name: str, status: str, n: int = 1) -> None:
        self.metrics.event_processed.labels(SERVICE, type_name, status).inc(n)

    async def on_event(self, event: Any) -> None:
        record = to_record(event)
        event_type = EVENT_BY_TOPIC[record.topic]
        try:
            decoded = decode(event_type, record)
        except StreamsError as exc:
            await self.dead_letter([(record, exc)])
            self._count(event_type.type_name(), DEAD_LETTER)
            return
        key = decoded.idempotency_key()
        now_ms = int(self.clock() * 1000)
        async with self.lock:
            old = self.table.get(key)
            new, outcomes = step(old, Incoming.of(decoded, record, now_ms), key)
            illegal = [(to_record_of(i), IllegalTransition(f"{i.type} not allowed in {state_name(old)}"))
                       for i, v in outcomes if v is Verdict.ILLEGAL]
            if illegal:
                await self.dead_letter(illegal)
            if new != old:
                self.table[key] = new
            if new.get("parked"):
                self.parked_keys.add((record.partition, key.encode()))
            else:
                self.parked_keys.discard((record.partition, key.encode()))
        for item, verdict in outcomes:
            status = {Verdict.APPLY: SUCCESS, Verdict.DUPLICATE: DUPLICATE,
                      Verdict.ILLEGAL: DEAD_LETTER, Verdict.PARK: PARKED}[verdict]
            self._count(item.type, status)

    async def dead_letter(self, failures: list[tuple[Record, StreamsError]]) -> None:
        now_ms = int(self.clock() * 1000)
        messages = [dead_letter(SERVICE, r, e, now_ms, self.metrics) for r, e in failures]
        await send_until_acked(self.publisher, messages)

    def _reindex(self) -> None:
        store = self.table.data
        topic = self.table.changelog_topic.get_topic_name()
        actives = self.app.assignor.assigned_actives()
        self.parked_keys = set()
        for partition, db in list(store._dbs.items()):
            if TP(topic, partition) in actives:
                for raw_key, raw_value in db.items():
                    if raw_key == FAUST_OFFSET_KEY or not raw_value:
                        continue
                    if json.loads(raw_value).get("parked"):
                        self.parked_keys.add((partition, raw_key))
        self._indexed_generation = self.app.rebalancing_count

    async def expire_parked(self) -> int:
        """Dead-letter parked events older than ``PARK_TIMEOUT`` (active partitions only)."""
        if self.app.rebalancing:
            return 0
        if self._indexed_generation != self.app.rebalancing_count:
            self._reindex()
        store = self.table.data
        now_ms = int(self.clock() * 1000)
        expired_total = 0
        for partition, raw_key in sorted(self.parked_keys):
            async with self.lock:
                db = store._db_for_partition(partition)
                state: State = json.loads(db.get(raw_key) or b"{}")
                expired = expired_parked(state, now_ms, self.park_timeout_ms)
                if not expired:
                    if not state.get("parked"):
                        self.parked_keys.discard((partition, raw_key))
                    continue
                await self.dead_letter([(to_record_of(i), ParkTimeout(
                    f"{i.type} waited {(now_ms - i.parked_at_ms) / 1000:.1f}s for its predecessor "
                    f"in {state.get('status')}")) for i in expired])
                new = without(state, {i.event_id for i in expired})
                db.put(raw_key, store._encode_value(new))
                self.table.send_changelog(partition, raw_key, new)
                if not new.get("parked"):
                    self.parked_keys.discard((partition, raw_key))
            for i in expired:
                self._count(i.type, DEAD_LETTER)
            expired_total += len(expired)
        return expired_total


def to_record_of(item: Incoming) -> Record:
    return Record(item.topic, item.partition, item.offset, item.key, item.value,
                  item.timestamp_ms, dict(item.headers))


def state_name(state: State | None) -> str:
    if not state:
        return "NEW"
    return f"{state['status']}/{state['reservation']}"
