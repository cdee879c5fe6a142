"""The ``notifications`` service: ``OrderPaid`` → SMS gateway → ``NotificationSent``.

Deduplicated by ``order_id`` in ``notifications-dedup`` (the pipeline's step 2); the
commit protocol around :meth:`NotificationsService.handle` is
:mod:`streams.engine.pipeline`. Gateway calls of a batch run concurrently, at most
``HANDLER_CONCURRENCY`` at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from agents.notifier import Notification, Notifier
from streams.engine.pipeline import Batch, Item
from streams.engine.ports import Indexer
from streams.engine.records import Outgoing, Record
from streams.events import NotificationSent, OrderPaid, ce_headers_of, decode_event, utcnow
from streams.engine.topology import ServiceSpec

#: NotificationSent ids are derived from the order id: a replay re-emits the same id.
ID_NAMESPACE = uuid.UUID("6f1f4c8e-2b1a-4d6e-9c51-5e0f0d6c1a01")


def notification_id(order_id: str) -> str:
    """``str(uuid5(ID_NAMESPACE, "notification-sent:" + order_id))``, without building
    UUID objects (the same bytes: RFC 4122 §4.3, SHA-1, version 5)."""
    digest = bytearray(hashlib.sha1(ID_NAMESPACE.bytes + f"notification-sent:{order_id}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
SENT_TOPIC = NotificationSent.topic()


#: processed order ids (the pipeline deduplicates by the record key)
DEDUP_TABLE = "notifications-dedup"

SPEC = ServiceSpec(
    name="notifications",
    sources=(OrderPaid.topic(),),
    tables=(DEDUP_TABLE,),
    derived=(NotificationSent.topic(),),
    description="OrderPaid → SMS gateway → NotificationSent, deduplicated by order id",
)


class NotificationsService:
    spec = SPEC
    dedup_table = DEDUP_TABLE

    def indexers(self) -> dict[str, Indexer]:
        return {}  # only the dedup table, whose index the pipeline derives

    def __init__(self, notifier: Notifier, *, concurrency: int = 64) -> None:
        self.notifier = notifier
        self.concurrency = concurrency

    def type_of(self, topic: str) -> str:
        return OrderPaid.type_name()

    def decoder(self, topic: str) -> Any:
        return OrderPaid

    def decode(self, topic: str, record: Record) -> Any:
        return decode_event(OrderPaid, record)

    async def handle(self, items: Sequence[Item], batch: Batch) -> None:
        todo = iter(items)
        sent_at = utcnow().isoformat()

        async def runner() -> None:  # a few runners take items in turn: no task per event
            for item in todo:
                try:
                    item.succeed(await self.notify(item.message, sent_at, item.partition))
                except Exception as exc:  # routed by the pipeline (retry or DLQ)
                    item.fail(exc)

        runners = min(self.concurrency, len(items)) if getattr(self.notifier, "concurrent", True) else 1
        if runners == 1:
            await runner()
        else:
            await asyncio.gather(*(runner() for _ in range(runners)))

    async def notify(self, event: OrderPaid, sent_at: str, partition: int) -> Outgoing:
        key = event.order_id
        await self.notifier.send(Notification(key, event.user_id, amount=event.amount), key)
        # Every field comes from a validated event or from us: serialised directly, the
        # shape NotificationSent validates (tests/unit/test_pipeline.py checks it), not
        # through the model (what that cost: docs/design-notes.md, "Hot-path costs").
        event_id = notification_id(key)
        body = orjson.dumps({
            "version": "v1", "event_id": event_id, "occurred_at": sent_at, "order_id": key,
            "user_id": event.user_id, "channel": self.notifier.channel, "causation_id": str(event.event_id),
        })
        # Same key as the OrderPaid, so the same partition: the order's events stay where
        # its state lives even if the payer's producer partitions differently.
        return Outgoing(SENT_TOPIC, key.encode(), body,
                        ce_headers_of(NotificationSent, event_id, "/order-streams/notifications", sent_at), partition)

    async def maintain(self, batch: Batch, partitions: Sequence[int]) -> None:
        return None
