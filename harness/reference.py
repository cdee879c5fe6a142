"""An independent, in-memory model of the worker's three services, for differential tests
and the chaos runs (tests/integration/test_differential.py, bench/chaos.py's kill storms).

Written from the contract (``/work/shared/design/contract.md``: topics, "Consumer commit
protocol", "Order lifecycle") and the README ("Services", "Failures: retries and dead
letters") — deliberately *not* from ``agents/``, ``tables/``, ``streams.engine`` or
``streams.events``, none of which is imported here: a schema bug in the worker's pydantic
models must not be reproduced here. **Rule: this module imports the standard library
only** (no ``streams``, ``agents``, ``tables``, ``orders``, no other ``harness`` module,
no third-party package) — tests/unit/test_reference_model.py reads its imports and fails
on any other. It lives in ``harness/`` and not in ``tests/support/`` because ``bench/``
may not import ``tests/`` (tests/unit/test_layout_rules.py, rule d) and the chaos runs
compare their tables with it too. The field rules below (:data:`FIELDS`) are written
out from the README ("Event schemas": ids, items, quantities, amounts, unknown fields and
versions), the contract ("Event bodies": optional ``event_id`` UUID and ``occurred_at``
RFC 3339) and the published wire format, ``schemas/*.json`` (the inventory events' and
``NotificationSent``'s fields, the 500-character cancellation reason, the versions there are).

The model is fed the records a test produces, in the order it produces them
(:meth:`Reference.feed`), and runs what the services derive from them
(:meth:`Reference.settle`): ``NotificationSent`` from ``OrderPaid``,
``InventoryReserved`` / ``InventoryRejected`` from ``OrderCreated``, both judged again
by the order state machine. It applies everything serially — one legal interleaving —
so a workload must be built such that the outcome does not depend on the
interleaving the real worker picks (see the differential test for how).

What it models:

- **decoding** (every service, per source topic): empty / null value, bytes that are
  not a JSON object → ``decode_error``; a JSON object that does not fit the schema, or
  a record key that is not the ``order_id`` (SKU on ``inventory.requests``, order id
  on ``inventory.answers``) → ``validation_error`` (a payload ``version`` that no
  model of the event has → ``unknown_version``); to ``<service>.dlq``, bytes verbatim.
- **notifications**: deduplicated by ``order_id``; the first valid ``OrderPaid`` of
  an order derives one ``NotificationSent`` (``causation_id`` = that event's id) once
  the gateway accepts it — each failed call a ``retry``, and after the last retry tier
  a ``max_attempts`` dead letter instead (the order is not marked: a later copy is
  tried again); the state of the order does not matter.
- **order-state**: two facts, ``status`` (``NEW → CREATED → PAID → NOTIFIED``,
  ``CREATED → CANCELLED``) and ``reservation`` (``PENDING → RESERVED | REJECTED``, only
  after ``OrderCreated``). Per event: a type already applied → duplicate; allowed now →
  applied (``version + 1``, appended to ``history``) and the parked events judged
  again; its predecessor can still come → parked (one per type: a second one of a
  parked type is a duplicate); never possible any more → ``illegal_transition`` (the
  state unchanged). Park timeouts only when the test says the time has passed
  (:meth:`Reference.time_out_parked`): every event still parked then is dead-lettered.
- **inventory**: stock per SKU (``set`` commands); an order is decided once (a replayed
  ``OrderCreated`` changes nothing): every SKU with enough available stock is
  reserved, and if any is short the order is rejected (``short`` = those SKUs, sorted)
  and what it reserved is released.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

# -- names from the contract (spelled out here, not taken from the registry) --------------

CREATED = "events.order.created.v1"
PAID = "events.order.paid.v1"
CANCELLED = "events.order.cancelled.v1"
SENT = "events.notification.sent.v1"
RESERVED = "events.inventory.reserved.v1"
REJECTED = "events.inventory.rejected.v1"
REQUESTS = "inventory.requests"
ANSWERS = "inventory.answers"

NOTIFICATIONS, ORDER_STATE, INVENTORY = "notifications", "order-state", "inventory"
SERVICES = (NOTIFICATIONS, ORDER_STATE, INVENTORY)
#: the services that consume each topic
CONSUMERS: dict[str, tuple[str, ...]] = {
    CREATED: (ORDER_STATE, INVENTORY),
    PAID: (NOTIFICATIONS, ORDER_STATE),
    CANCELLED: (ORDER_STATE,),
    SENT: (ORDER_STATE,),
    RESERVED: (ORDER_STATE,),
    REJECTED: (ORDER_STATE,),
    REQUESTS: (INVENTORY,),
    ANSWERS: (INVENTORY,),
}
TYPE_OF = {CREATED: "OrderCreated", PAID: "OrderPaid", CANCELLED: "OrderCancelled", SENT: "NotificationSent",
           RESERVED: "InventoryReserved", REJECTED: "InventoryRejected"}


# -- field rules (see the module docstring for where each comes from) ---------------------

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
#: RFC 3339 date-time: date, "T" (or a space, or lower case), time, optional fraction, offset
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
DECIMAL_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
MAX_ITEMS, MAX_QTY, MAX_AMOUNT, MAX_REASON = 100, 10_000, Decimal(1_000_000_000), 500
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def _known_versions(topic: str) -> set[int]:
    """The versions of ``topic``'s event that are published (``schemas/<d>.<e>.v<N>.json``)."""
    family = topic.removeprefix("events.").rsplit(".v", 1)[0]
    return {int(p.name[len(family) + 2:-5]) for p in SCHEMAS.glob(f"{family}.v*.json")}


def _is_id(v: Any) -> bool:
    return isinstance(v, str) and bool(ID_RE.match(v))


def _int_in(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _is_uuid(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        uuid.UUID(v)
    except ValueError:
        return False
    return True


def _is_amount(v: Any) -> bool:
    """0 to 1,000,000,000, at most 4 decimals: a JSON number or a plain decimal string
    (the worker also takes "1e3" and " 12"; the README does not say, the workload does
    not send them)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    if isinstance(v, str) and not DECIMAL_RE.match(v):
        return False
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        return False
    exponent = d.normalize().as_tuple().exponent  # decimals of the value: "1999.9900" has 2
    return 0 <= d <= MAX_AMOUNT and isinstance(exponent, int) and -exponent <= 4


def _is_items(v: Any) -> bool:
    return (isinstance(v, list) and 1 <= len(v) <= MAX_ITEMS
            and all(isinstance(i, dict) and set(i) == {"sku", "qty"} and _is_id(i["sku"])
                    and _int_in(i["qty"], 1, MAX_QTY) for i in v))


Rule = Callable[[Any], bool]
#: fields every event may carry
OPTIONAL: dict[str, Rule] = {
    "version": lambda v: v == "v1",
    "event_id": _is_uuid,
    "occurred_at": lambda v: v is None or (isinstance(v, str) and bool(TIME_RE.match(v))),
}
#: topic → (required fields, further optional fields), each with its rule; nothing else
FIELDS: dict[str, tuple[dict[str, Rule], dict[str, Rule]]] = {
    CREATED: ({"order_id": _is_id, "user_id": _is_id, "items": _is_items, "amount": _is_amount}, {}),
    PAID: ({"order_id": _is_id, "user_id": _is_id, "amount": _is_amount}, {}),
    CANCELLED: ({"order_id": _is_id}, {"reason": lambda v: isinstance(v, str) and len(v) <= MAX_REASON}),
    SENT: ({"order_id": _is_id, "user_id": _is_id, "causation_id": _is_uuid},
           {"channel": lambda v: v in ("sms", "log")}),
    RESERVED: ({"order_id": _is_id, "items": _is_items, "causation_id": _is_uuid}, {}),
    REJECTED: ({"order_id": _is_id, "items": _is_items, "causation_id": _is_uuid},
               {"short": lambda v: isinstance(v, list) and len(v) <= MAX_ITEMS and all(map(_is_id, v))}),
}


def fits(topic: str, obj: dict[str, Any]) -> bool:
    """Whether a JSON object is a valid (v1) event of ``topic``'s type."""
    required, optional = FIELDS[topic]
    rules = {**OPTIONAL, **optional, **required}
    return set(required) <= set(obj) and all(k in rules and rules[k](v) for k, v in obj.items())


class Item(NamedTuple):
    sku: str
    qty: int


@dataclass(frozen=True)
class Event:
    """What the model needs of a valid event."""

    type: str
    order_id: str
    #: the event id as the worker will report it; None when the record had none
    event_id: str | None
    items: tuple[Item, ...] = ()


def dlq(service: str) -> str:
    return f"{service}.dlq"


DECODE_ERROR, VALIDATION_ERROR, ILLEGAL = "decode_error", "validation_error", "illegal_transition"
UNKNOWN_VERSION = "unknown_version"

# -- the order lifecycle ---------------------------------------------------------------

#: event type → (status it needs, status it leads to)
STATUS_MOVES = {
    "OrderCreated": ("NEW", "CREATED"),
    "OrderPaid": ("CREATED", "PAID"),
    "NotificationSent": ("PAID", "NOTIFIED"),
    "OrderCancelled": ("CREATED", "CANCELLED"),
}
#: event type → reservation it leads to (from PENDING, once the order is created)
RESERVATION_MOVES = {"InventoryReserved": "RESERVED", "InventoryRejected": "REJECTED"}
STATUS_TYPES = tuple(STATUS_MOVES)
RESERVATION_TYPES = tuple(RESERVATION_MOVES)


def _successors() -> dict[str, set[str]]:
    direct: dict[str, set[str]] = {}
    for before, after in STATUS_MOVES.values():
        direct.setdefault(before, set()).add(after)
        direct.setdefault(after, set())
    closure: dict[str, set[str]] = {}
    for status in direct:
        seen: set[str] = set()
        todo = list(direct[status])
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(direct[s])
        closure[status] = seen
    return closure


#: status → every status still reachable from it
LATER = _successors()

APPLY, DUPLICATE, PARK = "apply", "duplicate", "park"


@dataclass(frozen=True)
class Letter:
    """A dead letter as the model expects it. ``value`` None: not predicted (the bytes
    of a record the worker derived itself, e.g. its ``NotificationSent``)."""

    service: str
    source_topic: str
    key: bytes | None
    reason: str
    value: bytes | None


@dataclass(frozen=True)
class Arrival:
    """One event as it reached the order state machine."""

    type: str
    order_id: str
    event_id: str | None  # None: not predicted (an id the worker chose)
    topic: str
    key: bytes | None
    value: bytes | None  # None: not predicted


@dataclass
class Order:
    order_id: str
    status: str = "NEW"
    reservation: str = "PENDING"
    history: list[Arrival] = field(default_factory=list)
    parked: dict[str, Arrival] = field(default_factory=dict)  # in arrival order

    @property
    def version(self) -> int:
        return len(self.history)

    def view(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reservation": self.reservation,
            "version": self.version,
            "history": [(a.type, a.event_id) for a in self.history],
            "parked": sorted(self.parked),
        }


@dataclass(frozen=True)
class Derived:
    """A record a service derived (what the worker should have written)."""

    topic: str
    order_id: str
    type: str
    #: what the test can check of its body: causation id, items, short SKUs …
    facts: tuple[tuple[str, Any], ...]


class Reference:
    """``gateway_failures(order_id)``: how many calls for the order the SMS gateway
    fails (a retryable 503) before it accepts; with ``retry_tiers`` tiers an event gets
    ``1 + retry_tiers`` attempts, then it is dead-lettered as ``max_attempts``."""

    def __init__(self, *, gateway_failures: Callable[[str], int] = lambda order_id: 0,
                 retry_tiers: int = 3) -> None:
        self.gateway_failures = gateway_failures
        self.retry_tiers = retry_tiers
        self.orders: dict[str, Order] = {}
        self.letters: list[Letter] = []
        self.derived: list[Derived] = []
        #: notifications: order id → event id of the OrderPaid that was notified (None: unknown)
        self.notified: dict[str, str | None] = {}
        #: inventory
        self.stock: dict[str, dict[str, int]] = {}
        self.decided: dict[str, str] = {}  # order id → "reserved" / "rejected"
        #: event ids of inventory / notification events the test produced itself
        self.foreign_ids: set[str] = set()
        self.counts: Counter[tuple[str, str]] = Counter()  # (service, outcome)
        self._pending: deque[Arrival] = deque()

    # -- input ---------------------------------------------------------------------------

    def feed(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """A record the test produced to ``topic`` (in production order per partition)."""
        if topic in FIELDS:
            event, reason = self.decode_event(topic, key, value)
            for service in CONSUMERS[topic]:
                if event is None:
                    self._letter(service, topic, key, reason, value)
                    continue
                if service == NOTIFICATIONS:
                    self._notify(event, value)
                elif service == INVENTORY:
                    self._inventory_created(event)
                else:
                    if topic in (SENT, RESERVED, REJECTED) and event.event_id is not None:
                        self.foreign_ids.add(event.event_id)
                    self._order_state(Arrival(TYPE_OF[topic], event.order_id, event.event_id, topic, key, value))
        elif topic == REQUESTS:
            self._stock_command(key, value)
        elif topic == ANSWERS:
            self._answer(key, value)
        else:
            raise ValueError(f"the model has no consumer of {topic}")

    def settle(self) -> None:
        """Run the derived events through the order state machine until none is left."""
        while self._pending:
            self._order_state(self._pending.popleft())

    # -- decoding ------------------------------------------------------------------------

    @staticmethod
    def _json_object(value: bytes | None) -> dict[str, Any] | None:
        if not value:
            return None
        try:
            obj = json.loads(value)
        except ValueError:  # not JSON, or not UTF-8
            return None
        return obj if isinstance(obj, dict) else None

    def decode_event(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[Event | None, str]:
        """``(event, "")`` or ``(None, reason)``. A payload ``version`` other than the
        topic's (v1) is ``unknown_version`` when no published schema has it, else (a
        known other version, or not a version at all) ``validation_error``."""
        obj = self._json_object(value)
        if obj is None:
            return None, DECODE_ERROR
        version = obj.get("version", "v1")
        if version != "v1":
            m = VERSION_RE.match(version) if isinstance(version, str) else None
            if m is not None and int(m[1]) not in _known_versions(topic):
                return None, UNKNOWN_VERSION
            return None, VALIDATION_ERROR
        if not fits(topic, obj):
            return None, VALIDATION_ERROR
        if key is None or key != obj["order_id"].encode():
            return None, VALIDATION_ERROR
        event_id = str(uuid.UUID(obj["event_id"])) if "event_id" in obj else None
        items = tuple(Item(i["sku"], i["qty"]) for i in obj.get("items", ()))
        return Event(TYPE_OF[topic], obj["order_id"], event_id, items), ""

    def _letter(self, service: str, topic: str, key: bytes | None, reason: str, value: bytes | None) -> None:
        self.letters.append(Letter(service, topic, key, reason, value or None))
        self.counts[(service, f"dead_letter:{reason}")] += 1

    # -- notifications -------------------------------------------------------------------

    def _notify(self, paid: Event, value: bytes | None) -> None:
        if paid.order_id in self.notified:
            self.counts[(NOTIFICATIONS, DUPLICATE)] += 1
            return
        failures = self.gateway_failures(paid.order_id)
        self.counts[(NOTIFICATIONS, "retry")] += min(failures, self.retry_tiers)
        if failures > self.retry_tiers:  # every attempt failed: not notified (a later copy tries again)
            self._letter(NOTIFICATIONS, PAID, paid.order_id.encode(), "max_attempts", value)
            return
        cause = paid.event_id
        self.notified[paid.order_id] = cause
        self.counts[(NOTIFICATIONS, "success")] += 1
        self.derived.append(Derived(SENT, paid.order_id, "NotificationSent", (("causation_id", cause),)))
        self._pending.append(Arrival("NotificationSent", paid.order_id, None, SENT, paid.order_id.encode(), None))

    # -- order-state ---------------------------------------------------------------------

    @staticmethod
    def judge(order: Order, event_type: str) -> str:
        if any(a.type == event_type for a in order.history):
            return DUPLICATE
        if event_type in STATUS_MOVES:
            needs, _ = STATUS_MOVES[event_type]
            if order.status == needs:
                return APPLY
            return PARK if needs in LATER[order.status] else ILLEGAL
        if order.status == "NEW":
            return PARK  # inventory events follow OrderCreated
        return APPLY if order.reservation == "PENDING" else ILLEGAL

    @staticmethod
    def _apply(order: Order, arrival: Arrival) -> None:
        if arrival.type in STATUS_MOVES:
            order.status = STATUS_MOVES[arrival.type][1]
        else:
            order.reservation = RESERVATION_MOVES[arrival.type]
        order.history.append(arrival)

    def _order_state(self, arrival: Arrival) -> None:
        order = self.orders.setdefault(arrival.order_id, Order(arrival.order_id))
        verdict = self.judge(order, arrival.type)
        if verdict == PARK and arrival.type in order.parked:
            verdict = DUPLICATE
        self.counts[(ORDER_STATE, verdict)] += 1
        if verdict == PARK:
            order.parked[arrival.type] = arrival
        elif verdict == ILLEGAL:
            self._letter(ORDER_STATE, arrival.topic, arrival.key, ILLEGAL, arrival.value)
        elif verdict == APPLY:
            self._apply(order, arrival)
            self._unpark(order)

    def _unpark(self, order: Order) -> None:
        """Parked events, in arrival order, judged again until none moves."""
        moved = True
        while moved:
            moved = False
            for event_type, waiting in list(order.parked.items()):
                verdict = self.judge(order, event_type)
                if verdict == PARK:
                    continue
                del order.parked[event_type]
                self.counts[(ORDER_STATE, f"unparked:{verdict}")] += 1
                if verdict == APPLY:
                    self._apply(order, waiting)
                elif verdict == ILLEGAL:
                    self._letter(ORDER_STATE, waiting.topic, waiting.key, ILLEGAL, waiting.value)
                moved = True
                break

    # -- inventory -----------------------------------------------------------------------

    def available(self, sku: str) -> int:
        return self.stock.get(sku, {}).get("available", 0)

    def _inventory_created(self, created: Event) -> None:
        oid = created.order_id
        if oid in self.decided:  # decided once per order: a replay changes nothing
            self.counts[(INVENTORY, DUPLICATE)] += 1
            return
        wanted: dict[str, int] = {}
        for item in created.items:
            wanted[item.sku] = wanted.get(item.sku, 0) + item.qty
        held: dict[str, int] = {}
        short: list[str] = []
        for sku, qty in wanted.items():
            s = self.stock.setdefault(sku, {"available": 0, "reserved": 0})
            if s["available"] >= qty:
                s["available"] -= qty
                s["reserved"] += qty
                held[sku] = qty
            else:
                short.append(sku)
        items = tuple((i.sku, i.qty) for i in created.items)
        if short:
            for sku, qty in held.items():  # a rejected order holds nothing
                self.stock[sku]["available"] += qty
                self.stock[sku]["reserved"] -= qty
            self.decided[oid] = "rejected"
            self.derived.append(Derived(REJECTED, oid, "InventoryRejected",
                                        (("items", items), ("short", tuple(sorted(short))))))
            self._pending.append(Arrival("InventoryRejected", oid, None, REJECTED, oid.encode(), None))
        else:
            self.decided[oid] = "reserved"
            self.derived.append(Derived(RESERVED, oid, "InventoryReserved", (("items", items),)))
            self._pending.append(Arrival("InventoryReserved", oid, None, RESERVED, oid.encode(), None))
        self.counts[(INVENTORY, "success")] += 1

    def _stock_command(self, key: bytes | None, value: bytes | None) -> None:
        """``inventory.requests`` from outside the service: only ``set`` is modelled."""
        obj = self._json_object(value)
        if obj is None:
            return self._letter(INVENTORY, REQUESTS, key, DECODE_ERROR, value)
        allowed = {"kind", "sku", "qty", "order_id", "reply_to"}
        ok = (set(obj) <= allowed and obj.get("kind") in ("reserve", "release", "set") and _is_id(obj.get("sku"))
              and _int_in(obj.get("qty"), 0, 1_000_000_000)
              and (obj.get("order_id") is None or _is_id(obj["order_id"]))
              and (obj.get("reply_to") is None or _int_in(obj["reply_to"], 0, 100_000)))
        if not ok or key != obj["sku"].encode():
            return self._letter(INVENTORY, REQUESTS, key, VALIDATION_ERROR, value)
        if obj["kind"] != "set":
            raise NotImplementedError("reserve/release from outside the service are not modelled")
        s = self.stock.setdefault(obj["sku"], {"available": 0, "reserved": 0})
        s["available"] = obj["qty"]
        self.counts[(INVENTORY, "stock_set")] += 1

    def _answer(self, key: bytes | None, value: bytes | None) -> None:
        """``inventory.answers`` from outside the service: only invalid ones are modelled."""
        obj = self._json_object(value)
        if obj is None:
            return self._letter(INVENTORY, ANSWERS, key, DECODE_ERROR, value)
        if obj.get("kind") not in ("expect", "answer"):  # README: does not fit → validation_error
            return self._letter(INVENTORY, ANSWERS, key, VALIDATION_ERROR, value)
        if obj["kind"] == "answer":
            ok = (set(obj) <= {"kind", "order_id", "sku", "qty", "decision"} and _is_id(obj.get("order_id"))
                  and _is_id(obj.get("sku")) and _int_in(obj.get("qty"), 0, 1_000_000_000)
                  and obj.get("decision") in ("reserved", "rejected", "released"))
            if ok and key == obj["order_id"].encode():
                raise NotImplementedError("valid answers from outside the service are not modelled")
            return self._letter(INVENTORY, ANSWERS, key, VALIDATION_ERROR, value)
        raise NotImplementedError("expect messages from outside the service are not modelled")

    def time_out_parked(self) -> None:
        """``PARK_TIMEOUT`` passed: every event still parked is dead-lettered
        (``out_of_order_timeout``), its bytes verbatim, and the state keeps the rest."""
        for order in self.orders.values():
            for waiting in order.parked.values():
                self._letter(ORDER_STATE, waiting.topic, waiting.key, "out_of_order_timeout", waiting.value)
            order.parked.clear()

    # -- results -------------------------------------------------------------------------

    def view(self, order_id: str) -> dict[str, Any] | None:
        order = self.orders.get(order_id)
        return order.view() if order else None

    def parked_total(self) -> int:
        return sum(len(o.parked) for o in self.orders.values())


# -- comparing a worker with the model -------------------------------------------------------
#
# Shared by the differential test and the chaos runs, so that "equal to the model" means one
# thing everywhere. ``got`` is what the worker's web view answers: ``GET /orders/{id}``
# (None for a 404) and ``GET /inventory/{sku}``.


def compare_order(oid: str, want: dict[str, Any] | None, got: dict[str, Any] | None) -> list[str]:
    """The mismatches between the model's view of an order (:meth:`Reference.view`) and the
    worker's ``GET /orders/{id}`` body, one line each; [] when they agree.

    Compared: status, reservation, version; the status events and the reservation events
    each in their order (not where the inventory event lands among the others — the
    contract leaves that to the interleaving, see the differential test), an inventory
    event never before ``OrderCreated``; each event id the model predicted; what is still
    parked."""
    if want is None or got is None:
        return [] if want is got else [f"{oid}: worker {got!r:.300} vs model {want!r:.300}"]
    out = []
    for fact in ("status", "reservation", "version"):
        if got.get(fact) != want[fact]:
            out.append(f"{oid}: {fact} worker {got.get(fact)!r} vs model {want[fact]!r}")
    history = [(h["type"], h.get("event_id")) for h in got.get("history", [])]
    types = [t for t, _ in history]
    for fact, group in (("status", STATUS_TYPES), ("reservation", RESERVATION_TYPES)):  # each in order
        g = [t for t in types if t in group]
        w = [t for t, _ in want["history"] if t in group]
        if g != w:
            out.append(f"{oid}: {fact} history worker {g} vs model {w} (worker's whole history: {types})")
    for t in types:  # an inventory event always follows OrderCreated
        if t in RESERVATION_TYPES and "OrderCreated" in types and types.index(t) < types.index("OrderCreated"):
            out.append(f"{oid}: {t} before OrderCreated in the worker's history {types}")
    got_ids = dict(history)
    for t, event_id in want["history"]:
        if event_id is not None and t in got_ids and got_ids[t] != event_id:
            out.append(f"{oid}: {t} event_id worker {got_ids[t]} vs model {event_id}")
    parked = sorted(p["type"] for p in got.get("parked", []))
    if parked != want["parked"]:
        out.append(f"{oid}: parked worker {parked} vs model {want['parked']}")
    return out


def compare_stock(sku: str, want: dict[str, int], got: dict[str, Any] | int | None) -> list[str]:
    """The mismatch between the model's stock of ``sku`` (``Reference.stock[sku]``) and the
    worker's ``GET /inventory/{sku}`` body (an int: the HTTP status it answered instead);
    [] when available and reserved agree."""
    pair = (got.get("available"), got.get("reserved")) if isinstance(got, dict) else None
    if pair == (want["available"], want["reserved"]):
        return []
    return [f"stock {sku}: worker {got!r:.200} vs model {want}"]
