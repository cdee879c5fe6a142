"""The ``order-state`` service: keeps :mod:`tables.order_state` up to date.

Per event, on Faust's normal table path (``table[key] = state``): Faust flushes the
producer — the table's changelog records included — before it commits offsets.
Records that cannot be decoded go to ``order-state.dlq`` (ack awaited) and are then
acknowledged; nothing escapes the agent.
"""

from __future__ import annotations

import logging
from typing import Any

from streams import headers as H
from streams.batching import to_record
from streams.errors import StreamsError
from streams.events import EVENT_BY_TOPIC
from streams.metrics import DEAD_LETTER, DUPLICATE, SUCCESS, Metrics
from streams.pipeline import Outgoing, Publisher, decode, dlq_topic, send_until_acked
from tables.order_state import apply

log = logging.getLogger(__name__)

SERVICE = "order-state"


class OrderStateService:
    name = SERVICE

    def __init__(self, table: Any, publisher: Publisher, metrics: Metrics, clock: Any) -> None:
        self.table = table
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock

    async def on_event(self, event: Any) -> None:
        record = to_record(event)
        event_type = EVENT_BY_TOPIC[record.topic]
        try:
            decoded = decode(event_type, record)
        except StreamsError as exc:
            await self.dead_letter(record, exc)
            self.metrics.event_processed.labels(SERVICE, event_type.type_name(), DEAD_LETTER).inc()
            return
        key = decoded.idempotency_key()
        new = apply(self.table.get(key), decoded)
        if new is None:
            self.metrics.event_processed.labels(SERVICE, event_type.type_name(), DUPLICATE).inc()
            return
        self.table[key] = new
        self.metrics.event_processed.labels(SERVICE, event_type.type_name(), SUCCESS).inc()

    async def dead_letter(self, record: Any, error: StreamsError) -> None:
        now_ms = int(self.clock() * 1000)
        hdrs = H.failure_headers(record, error, H.attempt_of(record.headers) + 1, now_ms)
        hdrs += ((H.DLQ_REASON, error.dlq_reason.encode()),)
        msg = Outgoing(dlq_topic(SERVICE), record.key, record.value, hdrs, record.partition)
        await send_until_acked(self.publisher, [msg])
        self.metrics.dead_letter.labels(SERVICE, error.dlq_reason).inc()
        log.warning("%s: dead-lettered %s[%d]@%d: %s", SERVICE, record.topic,
                    record.partition, record.offset, error)
