"""The ``inventory`` service: ``OrderCreated`` → reservation per SKU → one result per order.

Three stages, one per source topic, each keyed by what it decides on:

1. ``events.order.created.v1`` and ``.v2`` (key: order id; both read as v2) → one
   ``reserve`` command per SKU to ``inventory.requests`` (key: SKU) — the repartition
   by SKU — and one ``expect`` message (the order's items) to ``inventory.answers``
   (key: order id). One order created on both topics is handled once: the first
   ``OrderCreated`` of an order leaves a marker (``<order id>\x00created``, in
   ``inventory-orders``, the order's partition) and any later one — the same order on
   the other version's topic, or a replay — is a ``duplicate`` that sends nothing.
   The marker expires with the order's decisions (``DEDUP_TTL``); behind it,
   decisions per (SKU, order id) and the expectation per order id still hold.
2. ``inventory.requests`` → the SKU's stock in ``inventory-stock`` (decided once per
   order) → a ``SkuAnswer`` to ``inventory.answers`` (key: order id) — re-keyed by order.
3. ``inventory.answers`` → ``inventory-orders`` collects the expectation and the
   answers; when every SKU answered: ``events.inventory.reserved.v1`` or
   ``…rejected.v1``, ``release`` commands for what a rejected order holds, then a
   best-effort search warm-up (``SEARCH_URL``) after a reservation.

Derived events get ids derived from the order id, so a replay re-sends the same ids.
The internal commands and answers carry the CloudEvents headers too (:func:`internal`):
``ce_id`` derived from the order id, kind and SKU, ``ce_time`` the time of the record
that caused them; a reader checks their ``ce_type`` against the decoded message
(:func:`streams.events.check_ce_type`: a forged one is a dead letter, nothing else).
Records that cannot be read go to ``inventory.dlq``. Decisions and settled orders
expire after ``DEDUP_TTL`` through the time index, in their partition's stream time
(:mod:`streams.engine.streamtime`), never by the worker's wall clock, whose jump
would expire every decision at once (docs/design-notes.md, "Dedup markers").
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from streams.engine.errors import DecodeError, ValidationFailed
from streams.engine.pipeline import DUPLICATE, MAINTENANCE_LIMIT, SUCCESS, Batch, Item
from streams.engine.ports import INDEX_PREFIX, Indexer, index_key
from streams.engine.records import Outgoing, Record
from streams.events import (
    InventoryRejected, InventoryReserved, Message, OrderCreated, OrderCreatedV2, OrderItem, UpcastContext,
    ce_headers, check_ce_type, decode_newest, message_headers, require_whole_chains, validation_summary,
)
from streams.engine.topology import ServiceSpec
from agents.rpc import BestEffortCaller
from tables.inventory import (
    ANSWER, ORDERS_TABLE, STOCK_TABLE, Expected, SkuAnswer, StockCommand, apply_command, decision_key,
    outcome, per_sku, record_answer, record_expected, settled,
)

log = logging.getLogger(__name__)

#: Internal topics of the service: the repartition by SKU, and the answers by order.
INVENTORY_REQUESTS = "inventory.requests"
INVENTORY_ANSWERS = "inventory.answers"

SPEC = ServiceSpec(
    name="inventory",
    # every version of OrderCreated (consumers read each as the newest; see streams.events)
    sources=(OrderCreated.topic(), OrderCreatedV2.topic(), INVENTORY_REQUESTS, INVENTORY_ANSWERS),
    tables=(STOCK_TABLE, ORDERS_TABLE),
    derived=(InventoryReserved.topic(), InventoryRejected.topic(), INVENTORY_REQUESTS, INVENTORY_ANSWERS),
    description="OrderCreated → stock per SKU → InventoryReserved | InventoryRejected",
)

ID_NAMESPACE = uuid.UUID("0b7f1f36-4f4e-4b43-9a8e-7d1c3c6f2a10")
#: ``ce_source`` of the derived events (CloudEvents headers, see streams.events.ce_headers)
CE_SOURCE = f"/order-streams/{SPEC.name}"
#: Every version's topic of OrderCreated, each decoded as the newest model.
CREATED_TOPICS = {OrderCreated.topic(): OrderCreated, OrderCreatedV2.topic(): OrderCreatedV2}
TYPES = {**{t: "OrderCreated" for t in CREATED_TOPICS}, INVENTORY_REQUESTS: "StockCommand",
         INVENTORY_ANSWERS: "SkuAnswer"}


def decode_message(parse: Callable[[bytes], Any], record: Record) -> Any:
    if not record.value:
        raise DecodeError("empty value")
    try:
        return parse(record.value)
    except ValidationError as exc:
        first = exc.errors()[0]
        not_an_object = first["type"] in ("json_invalid", "model_type", "model_attributes_type", "dict_type")
        if not_an_object and not first["loc"]:  # a JSON object with no or an unknown "kind" is a validation error
            raise DecodeError(f"not a JSON object: {first['msg']}") from None
        raise ValidationFailed(validation_summary(exc)) from None


def created_key(order_id: str) -> bytes:
    """The key of the marker that an order's ``OrderCreated`` was handled: beside the
    order's answers in ``inventory-orders``; an order id never holds ``\x00``."""
    return f"{order_id}\x00created".encode()


def command_bytes(cmd: BaseModel) -> bytes:
    return cmd.model_dump_json(exclude_none=True).encode()


def internal_id(msg: StockCommand | Expected | SkuAnswer) -> str:
    """The ``ce_id`` of an internal message: derived from what it is about (its kind,
    order id and SKU; a ``reserved``/``rejected`` answer from its decision too), so a
    replay or a retried send carries the same id. A ``set`` has no order: see seed-stock."""
    if isinstance(msg, Expected):
        about = f"expect:{msg.order_id}"
    elif isinstance(msg, SkuAnswer):
        about = f"answer:{msg.order_id}:{msg.sku}:{msg.decision}"
    else:
        about = f"{msg.kind}:{msg.order_id}:{msg.sku}"
    return str(uuid.uuid5(ID_NAMESPACE, f"inventory-{about}"))


def internal(topic: str, key: bytes, msg: StockCommand | Expected | SkuAnswer, time_ms: int,
             partition: int | None = None) -> Outgoing:
    """An internal record of the service with its CloudEvents headers (``ce_source``
    :data:`CE_SOURCE`, ``ce_time`` ``time_ms``: the time of the record that caused it)."""
    kind: type[Message] = type(msg)
    return Outgoing(topic, key, command_bytes(msg), message_headers(kind, internal_id(msg), CE_SOURCE, time_ms),
                    partition)


class InventoryService:
    spec = SPEC
    dedup_table = None  # decisions per (SKU, order) and outcomes per order are the memory

    def __init__(self, caller: BestEffortCaller, *, search_url: str, decision_ttl: float,
                 default_currency: str = "EUR") -> None:
        require_whole_chains()  # a gap stops start-up (one line) instead of dead-lettering a version
        self.upcast = UpcastContext(default_currency=default_currency)
        self.caller = caller
        self.search_url = search_url
        self.ttl_ms = int(decision_ttl * 1000)
        self._session: aiohttp.ClientSession | None = None

    def type_of(self, topic: str) -> str:
        return TYPES.get(topic, "unknown")

    def decoder(self, topic: str) -> Any:
        return CREATED_TOPICS.get(topic) or (SPEC.name, topic)

    def decode(self, topic: str, record: Record) -> Any:
        if topic in CREATED_TOPICS:  # v1 and v2 both as v2 (see streams.events.decode_newest)
            return decode_newest(topic, record, self.upcast)
        if topic == INVENTORY_REQUESTS:
            cmd = decode_message(StockCommand.model_validate_json, record)
            check_ce_type(StockCommand, record)
            if record.key != cmd.sku.encode():
                raise ValidationFailed(f"record key {record.key!r:.80} is not the SKU {cmd.sku!r}")
            return cmd
        msg = decode_message(ANSWER.validate_json, record)
        check_ce_type(type(msg), record)
        if record.key != msg.order_id.encode():
            raise ValidationFailed(f"record key {record.key!r:.80} is not the order id {msg.order_id!r}")
        return msg

    async def handle(self, items: Sequence[Item], batch: Batch) -> None:
        for item in items:
            try:
                msg = item.message
                if isinstance(msg, OrderCreatedV2):
                    self._order_created(item, msg, batch)
                elif isinstance(msg, StockCommand):
                    self._stock_command(item, msg, batch)
                else:
                    self._answer(item, msg, batch)
            except Exception as exc:
                item.fail(exc)

    # 1. OrderCreated → reserve commands keyed by SKU, and the expectation keyed by order
    def _order_created(self, item: Item, created: OrderCreatedV2, batch: Batch) -> None:
        # Once per order id, whichever version's topic brought it (the marker lives on the
        # partition of inventory-orders the expectation goes to: the order's).
        tx = batch.tx(ORDERS_TABLE, item.partition)
        marker = created_key(created.order_id)
        if tx.get(marker) is not None:
            item.succeed(status=DUPLICATE)
            return
        # Answers come back to the order's partition (where its OrderCreated, its other
        # events and its inventory-orders state are), whatever partitioner the SKU had.
        out = [internal(INVENTORY_REQUESTS, sku.encode(), StockCommand(
                   kind="reserve", sku=sku, qty=qty, order_id=created.order_id, reply_to=item.partition), item.time_ms)
               for sku, qty in per_sku(created.items).items()]
        # the internal expectation keeps what inventory decides on: SKU and quantity
        items = tuple(OrderItem(sku=i.sku, qty=i.qty) for i in created.items)
        expect = Expected(order_id=created.order_id, items=items, causation_id=created.event_id)
        out.append(internal(INVENTORY_ANSWERS, created.order_id.encode(), expect, item.time_ms, item.partition))
        at = batch.time(item.partition)  # forgotten DEDUP_TTL later, by maintain (index rebuilt from "t")
        tx.set(marker, orjson.dumps({"t": at}))
        tx.schedule(at, marker, durable=False)
        item.succeed(*out)

    # 2. stock per SKU -----------------------------------------------------------------
    def _stock_command(self, item: Item, cmd: StockCommand, batch: Batch) -> None:
        tx = batch.tx(STOCK_TABLE, item.partition)
        dkey = decision_key(cmd.sku, cmd.order_id) if cmd.order_id else None
        found = tx.get_many([cmd.sku.encode(), dkey] if dkey else [cmd.sku.encode()])
        raw_stock, raw_decision = found[0], (found[1] if dkey else None)
        stock = orjson.loads(raw_stock) if raw_stock else None
        decision = orjson.loads(raw_decision) if raw_decision else None
        new_stock, new_decision, announce, changed = apply_command(stock, decision, cmd)
        if changed:
            tx.set(cmd.sku.encode(), orjson.dumps(new_stock))
            if dkey is not None and new_decision is not None:
                # a decision expires DEDUP_TTL after it was made ("t"); the time index is
                # local (recovery rebuilds it from "t"), so it costs no changelog record
                decided_at = int(decision["t"]) if decision and "t" in decision else batch.time(item.partition)
                tx.set(dkey, orjson.dumps({**new_decision, "t": decided_at}))
                if decision is None:
                    tx.schedule(decided_at, dkey, durable=False)
        out = []
        if announce is not None and cmd.order_id is not None:
            answer = SkuAnswer(order_id=cmd.order_id, sku=cmd.sku, qty=cmd.qty, decision=announce)  # type: ignore[arg-type]
            out.append(internal(INVENTORY_ANSWERS, cmd.order_id.encode(), answer, item.time_ms, cmd.reply_to))
        item.succeed(*out, status=SUCCESS if changed else DUPLICATE)

    # 3. answers per order → one inventory event -----------------------------------------
    def _answer(self, item: Item, msg: Expected | SkuAnswer, batch: Batch) -> None:
        tx = batch.tx(ORDERS_TABLE, item.partition)
        key = msg.order_id.encode()
        raw = tx.get(key)
        old = orjson.loads(raw) if raw else None
        new, changed = record_expected(old, msg) if isinstance(msg, Expected) else record_answer(old, msg)
        result = outcome(new) if changed else None
        out: list[Outgoing] = []
        if old is None and changed:  # an order's answers are forgotten DEDUP_TTL after the first
            new["t"] = batch.time(item.partition)
            tx.schedule(new["t"], key, durable=False)
        if result is not None:
            out = self._outcome_messages(msg.order_id, new, result, item.partition, item.time_ms)
            new = settled(new, result)
            if result == "reserved" and self.search_url:
                skus = list(new["skus"])
                self.caller.call("search", lambda: self._warm_search(msg.order_id, skus))
        if changed:
            tx.set(key, orjson.dumps(new))
        item.succeed(*out, status=SUCCESS if changed else DUPLICATE)

    def _outcome_messages(self, order_id: str, order: dict[str, Any], result: str,
                          partition: int, time_ms: int) -> list[Outgoing]:
        key = order_id.encode()
        event_id = uuid.uuid5(ID_NAMESPACE, f"inventory-{result}:{order_id}")
        items = tuple(OrderItem(**i) for i in order["items"])
        causation = uuid.UUID(order["causation_id"])
        if result == "reserved":
            ev: InventoryReserved | InventoryRejected = InventoryReserved(
                order_id=order_id, items=items, causation_id=causation, event_id=event_id)
            return [Outgoing(InventoryReserved.topic(), key, ev.to_bytes(), ce_headers(ev, CE_SOURCE), partition)]
        short = tuple(sorted(s for s, d in order["answers"].items() if d != "reserved"))
        ev = InventoryRejected(order_id=order_id, items=items, short=short, causation_id=causation,
                               event_id=event_id)
        releases = [StockCommand(kind="release", sku=sku, qty=order["skus"][sku], order_id=order_id)
                    for sku, d in order["answers"].items() if d == "reserved"]
        return [Outgoing(InventoryRejected.topic(), key, ev.to_bytes(), ce_headers(ev, CE_SOURCE), partition)] + [
            internal(INVENTORY_REQUESTS, c.sku.encode(), c, time_ms) for c in releases]

    def indexers(self) -> dict[str, Indexer]:
        return {STOCK_TABLE: Indexer(self.index_entries), ORDERS_TABLE: Indexer(self.index_entries)}

    def index_entries(self, key: bytes, value: bytes) -> list[bytes]:
        """The local time-index entry of a decision (``<sku>\x00<order>``) or an order's
        answers, at the time it was first written ("t"), rebuilt by recovery."""
        if key.startswith(INDEX_PREFIX) or b'"t"' not in value:
            return []
        try:
            return [index_key(int(orjson.loads(value)["t"]), key)]
        except (ValueError, KeyError, TypeError):
            return []

    async def maintain(self, batch: Batch, partitions: Sequence[int]) -> None:
        """Forget decisions and settled orders older than ``DEDUP_TTL`` in their
        partition's stream time (none where it has none)."""
        for table in (STOCK_TABLE, ORDERS_TABLE):
            for partition in partitions:
                now = batch.known_time(partition)
                if now is None:
                    continue
                tx = batch.tx(table, partition)
                for at, key in tx.due(now - self.ttl_ms, MAINTENANCE_LIMIT):
                    tx.unschedule(at, key)
                    tx.delete(key)

    async def _warm_search(self, order_id: str, skus: list[str]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.search_url, json={"order_id": order_id, "skus": skus}) as resp:
            resp.raise_for_status()

    async def close(self) -> None:
        await self.caller.close()
        if self._session is not None:
            await self._session.close()
