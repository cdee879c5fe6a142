"""The ``inventory`` service: ``OrderCreated`` → reservation per SKU → one result per order.

Three steps, each its own agent, each keyed by what it decides on:

1. ``events.order.created.v1`` (key: order id) → one ``reserve`` command per SKU to
   ``inventory.requests`` (key: SKU) — the repartition by SKU; acks awaited.
2. ``inventory.requests`` → the SKU's stock in ``inventory-stock`` (decided once per
   order) → a ``SkuAnswer`` to ``inventory.answers`` (key: order id) — re-keyed by order.
3. ``inventory.answers`` → ``inventory-orders`` collects the answers; when every SKU
   answered: ``events.inventory.reserved.v1`` or ``…rejected.v1`` (acks awaited),
   ``release`` commands for what a rejected order holds, then a best-effort search
   warm-up (``SEARCH_URL``) after a reservation.

Derived events get ids derived from the order id, so a replay re-sends the same ids.
Records that cannot be read go to ``inventory.dlq``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from pydantic import BaseModel, ValidationError

from streams.batching import to_record
from streams.errors import DecodeError, StreamsError, ValidationFailed
from streams.events import InventoryRejected, InventoryReserved, OrderCreated
from streams.metrics import DEAD_LETTER, DUPLICATE, SUCCESS, Metrics
from streams.pipeline import Outgoing, Publisher, Record, dead_letter, decode, send_until_acked
from streams.rpc import BestEffortCaller
from tables.inventory import (
    ANSWERS_TOPIC, REQUESTS_TOPIC, SkuAnswer, StockCommand, apply_command, per_sku, record_answer,
)

log = logging.getLogger(__name__)

SERVICE = "inventory"
ID_NAMESPACE = uuid.UUID("0b7f1f36-4f4e-4b43-9a8e-7d1c3c6f2a10")


def decode_message(model: type[BaseModel], record: Record) -> Any:
    if not record.value:
        raise DecodeError("empty value")
    try:
        return model.model_validate_json(record.value)
    except ValidationError as exc:
        kind = exc.errors()[0]["type"]
        if kind == "json_invalid":
            raise DecodeError(str(exc.errors()[0]["msg"])) from None
        raise ValidationFailed(str(exc.errors()[0]["msg"])) from None


class InventoryService:
    name = SERVICE

    def __init__(
        self, stock: Any, orders: Any, publisher: Publisher, metrics: Metrics,
        caller: BestEffortCaller, *, search_url: str, clock: Callable[[], float],
    ) -> None:
        self.stock = stock
        self.orders = orders
        self.publisher = publisher
        self.metrics = metrics
        self.caller = caller
        self.search_url = search_url
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None

    def _count(self, type_name: str, status: str) -> None:
        self.metrics.event_processed.labels(SERVICE, type_name, status).inc()

    async def _read(self, event: Any, decode_fn: Callable[[Record], Any], type_name: str) -> Any:
        """The decoded value of ``event``, or None after dead-lettering it."""
        record = to_record(event)
        try:
            return decode_fn(record)
        except StreamsError as exc:
            msg = dead_letter(SERVICE, record, exc, int(self.clock() * 1000), self.metrics)
            await send_until_acked(self.publisher, [msg])
            self._count(type_name, DEAD_LETTER)
            return None

    # 1. OrderCreated → reserve commands, keyed by SKU ---------------------------------
    async def on_order_created(self, event: Any) -> None:
        created = await self._read(event, lambda r: decode(OrderCreated, r), "OrderCreated")
        if created is None:
            return
        commands = [
            StockCommand(kind="reserve", sku=sku, qty=qty, order_id=created.order_id,
                         items=created.items, causation_id=created.event_id)
            for sku, qty in per_sku(created.items).items()
        ]
        await send_until_acked(self.publisher, [
            Outgoing(REQUESTS_TOPIC, c.sku.encode(), c.model_dump_json().encode()) for c in commands
        ])
        self._count("OrderCreated", SUCCESS)

    # 2. stock per SKU -----------------------------------------------------------------
    async def on_stock_command(self, event: Any) -> None:
        cmd = await self._read(event, lambda r: decode_message(StockCommand, r), "StockCommand")
        if cmd is None:
            return
        old = self.stock.get(cmd.sku)
        new, decision = apply_command(old, cmd)
        if new != old:
            self.stock[cmd.sku] = new
        if decision is not None and cmd.order_id is not None and cmd.causation_id is not None:
            answer = SkuAnswer(order_id=cmd.order_id, sku=cmd.sku, qty=cmd.qty, decision=decision,
                               items=cmd.items, causation_id=cmd.causation_id)
            await send_until_acked(self.publisher, [
                Outgoing(ANSWERS_TOPIC, cmd.order_id.encode(), answer.model_dump_json().encode())
            ])
        self._count("StockCommand", SUCCESS if new != old else DUPLICATE)

    # 3. answers per order → one inventory event ----------------------------------------
    async def on_answer(self, event: Any) -> None:
        answer = await self._read(event, lambda r: decode_message(SkuAnswer, r), "SkuAnswer")
        if answer is None:
            return
        old = self.orders.get(answer.order_id)
        new, outcome = record_answer(old, answer)
        if outcome is not None:
            await send_until_acked(self.publisher, self._outcome_messages(answer, new, outcome))
        if new != old:
            self.orders[answer.order_id] = new
        self._count("SkuAnswer", SUCCESS if new != old else DUPLICATE)
        if outcome == "reserved" and self.search_url:
            self.caller.call("search", lambda: self._warm_search(answer.order_id, list(new["skus"])))

    def _outcome_messages(self, answer: SkuAnswer, order: dict[str, Any], outcome: str) -> list[Outgoing]:
        key = answer.order_id.encode()
        event_id = uuid.uuid5(ID_NAMESPACE, f"inventory-{outcome}:{answer.order_id}")
        if outcome == "reserved":
            ev: InventoryReserved | InventoryRejected = InventoryReserved(
                order_id=answer.order_id, items=answer.items, causation_id=answer.causation_id, event_id=event_id)
            return [Outgoing(InventoryReserved.topic(), key, ev.to_bytes())]
        short = tuple(sorted(s for s, d in order["answers"].items() if d != "reserved"))
        ev = InventoryRejected(order_id=answer.order_id, items=answer.items, short=short,
                               causation_id=answer.causation_id, event_id=event_id)
        releases = [
            StockCommand(kind="release", sku=sku, qty=order["skus"][sku], order_id=answer.order_id)
            for sku, d in order["answers"].items() if d == "reserved"
        ]
        return [Outgoing(InventoryRejected.topic(), key, ev.to_bytes())] + [
            Outgoing(REQUESTS_TOPIC, c.sku.encode(), c.model_dump_json().encode()) for c in releases
        ]

    async def _warm_search(self, order_id: str, skus: list[str]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.search_url, json={"order_id": order_id, "skus": skus}) as resp:
            resp.raise_for_status()

    async def close(self) -> None:
        await self.caller.close()
        if self._session is not None:
            await self._session.close()

