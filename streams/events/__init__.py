"""Versioned event models (the wire format) and the registry event type → topic.

Topics are named ``events.<domain>.<event>.v<N>``. Every event is keyed by its
``order_id`` (raw UTF-8 bytes), which is also its idempotency key.

The schemas are ours, so unknown fields are rejected (``extra="forbid"``): a
producer that sends a field we do not know is sending a version we do not know,
and that event goes to the dead-letter topic instead of being half-understood.

Versions: a published ``vN`` never changes (``schemas/`` and the gate in
:mod:`streams.events.schemas`); a change is a ``vN+1`` model on its own topic plus one
upcaster ``vN → vN+1`` in :data:`UPCASTERS`. Consumers read every version's topic and
get the newest model (:func:`decode_newest`); a record whose payload ``version`` or
``ce_type`` header names another version than its topic is a ``validation_error``, one
naming a version we do not know an ``unknown_version``.
"""

from __future__ import annotations

import random
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timezone
from decimal import Decimal
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from streams.engine.errors import DecodeError, ValidationFailed

if TYPE_CHECKING:
    from streams.engine.records import Record


#: Identifiers (order, user, SKU ids) are data from other people's code that ends up
#: in record keys, HTTP headers (the gateway's ``Idempotency-Key``), URLs and logs:
#: 1–128 characters from a safe set — letters, digits and ``._:-`` — starting with
#: a letter or digit, so every one of those places takes it as it is (what other ids
#: did: docs/design-notes.md, "Identifiers").
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
ID_MAX_LENGTH = 128
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)]

#: Bounds of an order: items per order, units per item, amount (money, at most 4 decimals).
MAX_ITEMS = 100
MAX_QTY = 10_000
MAX_AMOUNT = Decimal("1000000000")
MAX_REASON_LENGTH = 500
Amount = Annotated[Decimal, Field(ge=0, le=MAX_AMOUNT, decimal_places=4)]


_random = random.Random()


_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (4 << 76) | (0x8000 << 48)
_new_uuid = object.__new__
_set = object.__setattr__


def new_event_id() -> uuid.UUID:
    """A random (version 4) event id for an event that came without one.

    From the process's PRNG, not ``os.urandom`` (ids must be unique, not secret), and
    built without ``UUID.__init__``'s argument checks (what the two cost:
    docs/design-notes.md, "Hot-path costs"). Equal to
    ``uuid.UUID(int=n, version=4)`` (tests/unit/test_events.py checks it)."""
    u = _new_uuid(uuid.UUID)
    _set(u, "int", (_random.getrandbits(128) & _V4_CLEAR) | _V4_SET)
    _set(u, "is_safe", uuid.SafeUUID.unknown)
    return u


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Message(BaseModel):
    """Base of every model of a record the project writes: public events (:class:`Event`)
    and internal messages (inventory's commands and answers, the redrive ledger). Closed
    (``extra="forbid"``) and named ``<domain>.<name>.v<N>``: the name of its committed
    schema (``schemas/<domain>.<name>.v<N>.json``, frozen once published) and its
    CloudEvents ``ce_type`` (:func:`ce_type`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: ClassVar[str]
    name: ClassVar[str]
    schema_version: ClassVar[int] = 1


class Event(Message):
    """Base of every event: an id, an event time and a schema version."""

    version: Literal["v1"] = "v1"
    event_id: uuid.UUID = Field(default_factory=new_event_id)
    #: Event time. Optional on the wire (other services omit it); when absent the
    #: pipeline uses the Kafka record's timestamp.
    occurred_at: datetime | None = None

    @classmethod
    def topic(cls) -> str:
        return f"events.{cls.domain}.{cls.name}.v{cls.schema_version}"

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    def idempotency_key(self) -> str:
        return self.order_id  # type: ignore[attr-defined, no-any-return]

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Id
    qty: int = Field(gt=0, le=MAX_QTY)


class OrderCreated(Event):
    domain = "order"
    name = "created"

    order_id: Id
    user_id: Id
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    amount: Amount


#: An ISO 4217 alphabetic currency code (its shape: three capital letters).
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class OrderItemV2(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Id
    qty: int = Field(gt=0, le=MAX_QTY)
    #: Price of one unit in the order's currency; absent when the producer does not
    #: know it (every order upcast from v1).
    unit_price: Amount | None = None


class OrderCreatedV2(Event):
    """``OrderCreated`` v2: the order's ``currency`` (required) and a ``unit_price`` per
    item. Consumers read v1 as v2 (:func:`order_created_v1_to_v2`)."""

    domain = "order"
    name = "created"
    schema_version = 2

    version: Literal["v2"] = "v2"
    order_id: Id
    user_id: Id
    items: tuple[OrderItemV2, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    amount: Amount
    currency: Currency

    @classmethod
    def type_name(cls) -> str:
        return "OrderCreated"  # one type across versions: the state machine's, the metrics'


class OrderPaid(Event):
    domain = "order"
    name = "paid"

    order_id: Id
    user_id: Id
    amount: Amount


class OrderCancelled(Event):
    domain = "order"
    name = "cancelled"

    order_id: Id
    reason: str = Field("", max_length=MAX_REASON_LENGTH)


class NotificationSent(Event):
    """Derived by the ``notifications`` service once the SMS gateway accepted the call."""

    domain = "notification"
    name = "sent"

    order_id: Id
    user_id: Id
    channel: Literal["sms", "log"] = "sms"
    #: ``event_id`` of the ``OrderPaid`` that caused this notification.
    causation_id: uuid.UUID


class InventoryReserved(Event):
    """Derived by the ``inventory`` service: every item of the order is reserved."""

    domain = "inventory"
    name = "reserved"

    order_id: Id
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    causation_id: uuid.UUID


class InventoryRejected(Event):
    """Derived by the ``inventory`` service: some item is out of stock; nothing is held."""

    domain = "inventory"
    name = "rejected"

    order_id: Id
    items: tuple[OrderItem, ...] = Field(min_length=1, max_length=MAX_ITEMS)
    #: SKUs that were short.
    short: tuple[Id, ...] = Field((), max_length=MAX_ITEMS)
    causation_id: uuid.UUID


E = TypeVar("E", bound=Event)

EVENT_TYPES: tuple[type[Event], ...] = (
    OrderCreated, OrderCreatedV2, OrderPaid, OrderCancelled, NotificationSent, InventoryReserved,
    InventoryRejected,
)

#: event type → topic, e.g. ``OrderPaid`` → ``events.order.paid.v1``.
TOPICS: dict[type[Event], str] = {t: t.topic() for t in EVENT_TYPES}
#: topic → event type (the decoder of a raw record).
EVENT_BY_TOPIC: dict[str, type[Event]] = {topic: t for t, topic in TOPICS.items()}


#: One function per step of an event's version chain: ``(domain, name, N)`` → the
#: function that turns a ``vN`` payload (a dict of the ``vN`` model's fields) into a
#: ``vN+1`` payload. Every ``vN+1`` model needs one (:func:`chain_gaps`).
Upcaster = Callable[[dict[str, Any], "UpcastContext"], dict[str, Any]]


@dataclass(frozen=True)
class UpcastContext:
    """What an upcaster may need beyond the payload: settings of the reading process."""

    #: ``DEFAULT_CURRENCY``: the currency of orders whose event does not say (v1).
    default_currency: str = "EUR"


def order_created_v1_to_v2(payload: dict[str, Any], ctx: UpcastContext) -> dict[str, Any]:
    """v1 had no currency: every v1 order was in the shop's ``DEFAULT_CURRENCY``. v1
    items had no unit price: unknown (None), never guessed from the amount."""
    return {**payload, "version": "v2", "currency": ctx.default_currency,
            "items": [{**dict(i), "unit_price": None} for i in payload["items"]]}


UPCASTERS: dict[tuple[str, str, int], Upcaster] = {
    ("order", "created", 1): order_created_v1_to_v2,
}


def families(types: Iterable[type[Event]] = EVENT_TYPES) -> dict[tuple[str, str], dict[int, type[Event]]]:
    """``(domain, name)`` → version number → model."""
    out: dict[tuple[str, str], dict[int, type[Event]]] = {}
    for t in types:
        out.setdefault((t.domain, t.name), {})[t.schema_version] = t
    return out


def chain_gaps(types: Iterable[type[Event]] = EVENT_TYPES,
               upcasters: Mapping[tuple[str, str, int], Any] = UPCASTERS) -> list[str]:
    """One line per gap in a version chain: a missing version below the newest, or a
    ``vN+1`` model without an upcaster from ``vN``. Empty when every chain is whole."""
    gaps: list[str] = []
    for (domain, name), versions in sorted(families(types).items()):
        for n in range(1, max(versions) + 1):
            if n not in versions:
                gaps.append(f"{domain}.{name}: v{n} is missing below v{max(versions)}")
            elif n > 1 and (domain, name, n - 1) not in upcasters:
                gaps.append(f"{domain}.{name}: v{n} has no upcaster from v{n - 1} "
                            f"(add UPCASTERS[({domain!r}, {name!r}, {n - 1})])")
    return gaps


#: ``(domain, name)`` → its newest model: what consumers hand to their handlers.
NEWEST: dict[tuple[str, str], type[Event]] = {f: v[max(v)] for f, v in families().items()}
#: ``(domain, name)`` → the version numbers we know.
KNOWN_VERSIONS: dict[tuple[str, str], frozenset[int]] = {f: frozenset(v) for f, v in families().items()}
_VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")
_CE_TYPE = re.compile(r"^(.+)\.v([1-9][0-9]{0,8})$")
#: The CloudEvents Kafka binding's type header (binary mode).
CE_TYPE_HEADER = "ce_type"


class UnknownVersion(ValidationFailed):
    """A record of a version of its event that this code does not know (payload
    ``version`` or ``ce_type``). Dead-lettered (``unknown_version``): redrive it once a
    release that knows the version runs."""

    dlq_reason = "unknown_version"


class ChainGap(SystemExit):
    """Start-up stops: a version chain has a gap (:func:`chain_gaps`)."""


def require_whole_chains(types: Iterable[type[Event]] = EVENT_TYPES,
                         upcasters: Mapping[tuple[str, str, int], Any] = UPCASTERS) -> None:
    """Called by every consumer of versioned events when it is built: a ``vN+1`` model
    without an upcaster from ``vN`` would leave ``vN`` records unreadable, so the
    process stops with one line on stderr (exit 2) instead of dead-lettering them."""
    gaps = chain_gaps(types, upcasters)
    if gaps:
        more = f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else ""
        print(f"event versions: {gaps[0]}{more}", file=sys.stderr)
        raise ChainGap(2)


def ce_type(event_type: type[Message]) -> str:
    """The CloudEvents ``type`` of an event or internal message: ``<domain>.<name>.v<N>``
    (its schema's name)."""
    return f"{event_type.domain}.{event_type.name}.v{event_type.schema_version}"


#: ``ce_source`` of what the order service publishes; a worker service's is ``/order-streams/<service>``.
ORDERS_SOURCE = "/order-streams/orders"


def ce_dataschema(event_type: type[Message]) -> str:
    """The model's schema as a URI reference: its committed file (``schemas/…json``)."""
    return f"schemas/{ce_type(event_type)}.json"


def ce_headers(event: Event, source: str, time: datetime | None = None) -> tuple[tuple[str, bytes], ...]:
    """The CloudEvents headers every record the project produces carries (binary mode:
    the value stays the event's JSON): ``ce_specversion``, ``ce_id`` (the event id),
    ``ce_type``, ``ce_source``, ``ce_time`` (the event time, else ``time``, else now),
    ``ce_dataschema`` and ``content-type``. They describe; they never decide — a reader
    only checks ``ce_type`` against the topic (see :func:`decode_event`)."""
    at = event.occurred_at or time or utcnow()
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return ce_headers_of(type(event), str(event.event_id), source, at.isoformat())


def ce_headers_of(event_type: type[Message], event_id: str, source: str, time: str) -> tuple[tuple[str, bytes], ...]:
    """:func:`ce_headers` from the parts, for a producer that writes the JSON itself."""
    return (("ce_specversion", b"1.0"), ("ce_id", event_id.encode()), ("ce_type", ce_type(event_type).encode()),
            ("ce_source", source.encode()), ("ce_time", time.encode()),
            ("ce_dataschema", ce_dataschema(event_type).encode()), ("content-type", b"application/json"))


def upcast(event: Event, ctx: UpcastContext, upcasters: Mapping[tuple[str, str, int], Upcaster] = UPCASTERS,
           newest: Mapping[tuple[str, str], type[Event]] = NEWEST) -> Event:
    """``event`` as its newest version: the chain ``vN → vN+1 → …``, one upcaster per
    step, then validated by the newest model (so an upcaster cannot produce what a
    producer of that version could not send). The newest version is returned as is."""
    family = (event.domain, event.name)
    target = newest[family]
    if type(event) is target:
        return event
    data = event.model_dump()
    for n in range(event.schema_version, target.schema_version):
        data = upcasters[(*family, n)](data, ctx)
    try:
        return target.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(f"upcast to v{target.schema_version}: {validation_summary(exc)}") from None


def decode_newest(topic: str, record: "Record", ctx: UpcastContext) -> Event:
    """A record of a versioned event topic → the event as its newest version.

    The rule: a record is read by its topic's version (``events.<d>.<e>.v<N>``); its
    payload ``version`` and its ``ce_type`` header, when present, must say the same
    version — a known other version is a ``validation_error``, an unknown one an
    ``unknown_version`` — and then it is upcast (:func:`upcast`). Consumers deduplicate
    on the idempotency key (the order id), which no version changes, so one event
    published on two versions' topics is handled once."""
    return upcast(decode_event(EVENT_BY_TOPIC[topic], record), ctx)


def _version_problem(event_type: type[Event], exc: ValidationError) -> ValidationFailed | None:
    """The error for a payload ``version`` that is not the topic's, or None."""
    for e in exc.errors():
        if e["loc"] != ("version",):
            continue
        given = e.get("input")
        m = _VERSION.match(given) if isinstance(given, str) else None
        if m is None:
            return None
        family = (event_type.domain, event_type.name)
        known = KNOWN_VERSIONS.get(family, frozenset())
        names = ", ".join(f"v{n}" for n in sorted(known))
        if int(m[1]) not in known:
            return UnknownVersion(f"{family[0]}.{family[1]} version {given} is unknown here (known: {names})")
        return ValidationFailed(f"payload version {given} on the topic of {family[0]}.{family[1]} "
                                f"v{event_type.schema_version}")
    return None


def message_headers(message_type: type[Message], ce_id: str, source: str, time_ms: int
                    ) -> tuple[tuple[str, bytes], ...]:
    """The same CloudEvents headers on an internal message (inventory's commands and
    answers, seed-stock's commands, the redrive ledger), whose model has no id or time
    of its own. Rule for the caller: ``ce_id`` identifies the record, not the send — it
    is derived from what the record is about (an order id, kind and SKU; a claim), so a
    replayed or retried record carries the same id; only a record that is itself new
    (a new claim, a new seed-stock run) gets a new one. ``time_ms``: the record's time
    (epoch milliseconds, e.g. the time of the record that caused it)."""
    at = datetime.fromtimestamp(time_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return ce_headers_of(message_type, ce_id, source, at)


def check_ce_type(event_type: type[Message], record: "Record") -> None:
    """A ``ce_type`` header is data: it may only agree with what the record was decoded
    as — the topic's event, or the internal message its payload is — else the record is
    dead-lettered (``validation_error``; ``unknown_version`` for another version of the
    same type); nothing is routed or decoded by it. A record without one (written before
    the headers existed, or by another producer) is read as it is."""
    raw = record.headers.get(CE_TYPE_HEADER) if record.headers else None
    if raw is None:
        return
    given = raw.decode("utf-8", "replace")
    expected = ce_type(event_type)
    if given == expected:
        return
    m = _CE_TYPE.match(given)
    family = (event_type.domain, event_type.name)
    if m and m[1] == f"{family[0]}.{family[1]}" and int(m[2]) not in KNOWN_VERSIONS.get(family, ()):
        raise UnknownVersion(f"ce_type {given[:80]!r}: version unknown here")
    raise ValidationFailed(f"ce_type {given[:80]!r} disagrees with the topic's {expected!r}")


def topic_for(event_type: type[Event]) -> str:
    try:
        return TOPICS[event_type]
    except KeyError:
        raise KeyError(f"{event_type.__name__} is not a registered event type") from None


def decode_event(event_type: type[E], record: "Record") -> E:
    """A record's raw bytes → a validated event, or :class:`DecodeError` (not a JSON
    object, empty, null) / :class:`ValidationFailed` (schema, bounds, or a record key
    that is not the event's idempotency key)."""
    if not record.value:
        raise DecodeError("empty value")
    try:
        event = event_type.model_validate_json(record.value)
    except ValidationError as exc:
        first = exc.errors()[0]
        top_level = first["type"] == "json_invalid" or not first["loc"]
        if top_level and first["type"] in ("json_invalid", "json_type", "model_type", "model_attributes_type"):
            raise DecodeError(f"not a JSON object: {first['msg']}") from None
        raise (_version_problem(event_type, exc) or ValidationFailed(validation_summary(exc))) from None
    check_ce_type(event_type, record)
    expected = event.idempotency_key().encode()
    if record.key != expected:
        shown = record.key[:64] if record.key is not None else None
        raise ValidationFailed(f"record key {shown!r} is not the idempotency key {expected!r}")
    return event


def validation_summary(exc: ValidationError) -> str:
    """The first three problems of a pydantic error, one line, values left out."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(parts)[:500]
