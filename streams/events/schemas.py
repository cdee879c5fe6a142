"""Committed JSON Schemas of the events, and the gate that keeps a published version frozen.

Rule: a published ``vN`` of an event never changes. ``schemas/<domain>.<event>.v<N>.json``
is generated from the pydantic model (:func:`render`) and committed; ``faust -A streams
schema export`` (:func:`export`) writes it again. Any change to a committed ``vN``
beyond ``title`` / ``description`` is a breaking change for someone — an old reader
(every model is closed, ``additionalProperties: false``) or an old writer — so the gate
(:func:`gate`) refuses it and names the rule it breaks:

- ``new required field`` — old writers do not send it;
- ``new property in a closed schema`` — old readers reject records that carry it
  (this is what an "optional" field added to ``vN`` is);
- ``removed property`` — old writers still send it, and we now reject them;
- ``narrowed property`` / ``widened property`` — a bound, pattern, format or type changed;
- ``narrowed enum`` / ``widened enum`` — an allowed value (``enum``/``const``) removed / added;
- ``changed additionalProperties``, ``field made optional``, ``changed default``.

The way to change an event is a ``vN+1`` model (its own topic and schema file) plus an
upcaster from ``vN`` (:data:`streams.events.UPCASTERS`); the gate also refuses a version
chain with a gap (:func:`streams.events.chain_gaps`). ``tests/unit/test_schema_gate.py``
runs the gate against the committed files and fails when regeneration would change them.

:func:`asyncapi` describes every channel (event topics with payload schemas and
CloudEvents headers, the inventory's internal topics, retry tiers, DLQs, redrive
ledgers) as AsyncAPI 3.0; the export writes it to ``docs/asyncapi.json`` and the worker
serves it at ``/asyncapi.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from streams.events import EVENT_TYPES, UPCASTERS, Event, chain_gaps

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas"

#: Keywords that only document: a change to them is not a change of the schema.
DOC_KEYWORDS = frozenset({"title", "description", "examples", "$comment"})

#: Keywords whose larger value accepts more (upper bounds) / fewer (lower bounds).
UPPER_BOUNDS = frozenset({"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"})
LOWER_BOUNDS = frozenset({"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"})


def schema_name(event_type: type[Event]) -> str:
    """``order.paid.v1``: the schema's name (file ``schemas/order.paid.v1.json``)."""
    return f"{event_type.domain}.{event_type.name}.v{event_type.schema_version}"


def schema_path(event_type: type[Event]) -> str:
    """The schema's path in the repository, also its ``$id`` and ``ce_dataschema``."""
    return f"schemas/{schema_name(event_type)}.json"


def schema_of(event_type: type[Event]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the event as it is read (pydantic's validation mode)."""
    schema = event_type.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_path(event_type),
            **schema}


def dumps(doc: Any) -> str:
    """Stable text: sorted keys, two-space indent, a final newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render(types: Iterable[type[Event]] = EVENT_TYPES) -> dict[str, str]:
    """File name → text of every event's schema."""
    return {f"{schema_name(t)}.json": dumps(schema_of(t)) for t in types}


def export(root: Path = ROOT, types: Iterable[type[Event]] = EVENT_TYPES) -> list[Path]:
    """Write ``schemas/*.json`` and ``docs/asyncapi.json`` under ``root``; the paths
    written (changed or not)."""
    types = tuple(types)
    files = {f"schemas/{name}": text for name, text in render(types).items()}
    files["docs/asyncapi.json"] = dumps(asyncapi(types))
    written = []
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# -- the comparison -----------------------------------------------------------------------


def _resolve(node: Any, root: Mapping[str, Any]) -> Any:
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 32:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        rest = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **rest}
        seen += 1
    return node


def _allowed(node: Mapping[str, Any]) -> set[str] | None:
    """The values of ``enum``/``const`` as JSON text, or None when unrestricted."""
    if "const" in node:
        return {json.dumps(node["const"], sort_keys=True)}
    if "enum" in node:
        return {json.dumps(v, sort_keys=True) for v in node["enum"]}
    return None


def breaking_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every difference between two versions of one schema beyond title/description,
    each as ``"<rule> at <path>: <detail>"`` (empty: the schema is unchanged)."""
    problems: list[str] = []
    _compare(old, new, "$", old, new, problems)
    return problems


def _compare(old: Any, new: Any, path: str, old_root: Mapping[str, Any], new_root: Mapping[str, Any],
             out: list[str]) -> None:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            out.append(f"narrowed property at {path}: {old!r} became {new!r}")
        return
    add = out.append
    # enum / const
    a, b = _allowed(old), _allowed(new)
    if a != b:
        if b is not None and (a is None or a - b):
            gone = sorted(a - b) if a is not None else ["(any value)"]
            add(f"narrowed enum at {path}: {', '.join(gone)} no longer allowed")
        if a is not None and (b is None or b - a):
            more = sorted(b - a) if b is not None else ["(any value)"]
            add(f"widened enum at {path}: {', '.join(more)} now allowed (old readers reject it)")
    # object shape
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_req, new_req = set(old.get("required", ())), set(new.get("required", ()))
    for name in sorted(set(old_props) - set(new_props)):
        add(f"removed property at {path}.{name}: old writers still send it")
    for name in sorted(set(new_props) - set(old_props)):
        if name in new_req:
            add(f"new required field at {path}.{name}: old writers do not send it")
        else:
            add(f"new property in a closed schema at {path}.{name}: old readers reject records that carry it "
                f"(add it in a new version)")
    for name in sorted((new_req - old_req) & set(old_props)):
        add(f"new required field at {path}.{name}: was optional, old writers may leave it out")
    for name in sorted((old_req - new_req) & set(new_props)):
        add(f"field made optional at {path}.{name}: old readers require it")
    if old.get("additionalProperties", True) != new.get("additionalProperties", True):
        add(f"changed additionalProperties at {path}: {old.get('additionalProperties', True)!r} became "
            f"{new.get('additionalProperties', True)!r}")
    for name in sorted(set(old_props) & set(new_props)):
        _compare(old_props[name], new_props[name], f"{path}.{name}", old_root, new_root, out)
    # everything else: bounds, types, formats, combinators, items, defaults
    skip = DOC_KEYWORDS | {"properties", "required", "additionalProperties", "enum", "const", "$defs",
                           "$ref", "$schema", "$id"}
    for key in sorted((set(old) | set(new)) - skip):
        if key not in old or key not in new:
            if key in UPPER_BOUNDS | LOWER_BOUNDS or key in ("pattern", "format", "type", "multipleOf",
                                                               "decimal_places"):
                kind = "narrowed" if key in new else "widened"
                add(f"{kind} property at {path}: {key} {'added' if key in new else 'removed'}"
                    f" ({new.get(key, old.get(key))!r})")
            elif key == "default":
                add(f"changed default at {path}: {old.get(key, '(none)')!r} became {new.get(key, '(none)')!r}")
            else:
                add(f"narrowed property at {path}: keyword {key} {'added' if key in new else 'removed'}")
            continue
        o, n = old[key], new[key]
        if key in ("items", "not", "additionalItems", "contains"):
            _compare(o, n, f"{path}[]", old_root, new_root, out)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            if len(o) != len(n):
                add(f"narrowed property at {path}: {key} has {len(n)} alternatives instead of {len(o)}")
            else:
                for i, (x, y) in enumerate(zip(o, n)):
                    _compare(x, y, f"{path}.{key}[{i}]", old_root, new_root, out)
        elif o == n:
            continue
        elif key in UPPER_BOUNDS:
            add(f"{'narrowed' if n < o else 'widened'} property at {path}: {key} {o!r} became {n!r}")
        elif key in LOWER_BOUNDS:
            add(f"{'narrowed' if n > o else 'widened'} property at {path}: {key} {o!r} became {n!r}")
        elif key == "default":
            add(f"changed default at {path}: {o!r} became {n!r}")
        else:
            add(f"narrowed property at {path}: {key} {o!r} became {n!r}")


# -- the gate -----------------------------------------------------------------------------


def gate(types: Iterable[type[Event]] = EVENT_TYPES, committed: Path = SCHEMA_DIR,
         upcasters: Mapping[tuple[str, str, int], Callable[..., Any]] = UPCASTERS) -> list[str]:
    """Problems that stop a change from shipping: a committed ``vN`` schema the model
    no longer matches (each broken rule, named) and gaps in the upcaster chains.
    A version with no committed file yet is new: it is the exporter's to write."""
    types = tuple(types)
    problems = list(chain_gaps(types, upcasters))
    for t in types:
        path = committed / f"{schema_name(t)}.json"
        if not path.exists():
            continue
        old = json.loads(path.read_text(encoding="utf-8"))
        new = schema_of(t)
        found = breaking_changes(old, new)
        if not found:
            found = [f"jsoncompat: {role} incompatible" for role in _jsoncompat_verdict(old, new)]
        problems.extend(f"{schema_name(t)} is published and frozen; {p}" for p in found)
    return problems


def _jsoncompat_verdict(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The roles (``serializer``, ``deserializer``) in which ``jsoncompat`` (PyPI, a test
    dependency) finds ``new`` incompatible with ``old``: a second opinion for what the
    rules above do not name. Its resolver takes only local ``$ref`` s, so ``$id`` goes."""
    import jsoncompat  # the gate runs in tests and CI, never in the worker

    def text(doc: Mapping[str, Any]) -> str:
        return json.dumps({k: v for k, v in doc.items() if k != "$id"})

    return [role for role in ("serializer", "deserializer")
            if not jsoncompat.check_compat(text(old), text(new), role)]


# -- AsyncAPI 3.0 ---------------------------------------------------------------------------

ASYNCAPI_PATH = ROOT / "docs" / "asyncapi.json"

#: Headers the engine writes on retry and DLQ records (see streams.engine.headers), as strings.
_ENGINE_HEADERS = {
    "x-attempt": "attempts made so far",
    "x-not-before": "retry: epoch milliseconds before which the retry must not run",
    "x-source-topic": "the topic where the event first arrived",
    "x-source-partition": "its partition there",
    "x-source-offset": "its offset there",
    "x-error-type": "the exception's type",
    "x-error-message": "the exception's message (at most 1,000 characters)",
    "x-first-failed-at": "epoch milliseconds of the first failure",
    "x-failed-at": "epoch milliseconds of this failure",
}
DLQ_REASONS = ("decode_error", "validation_error", "unknown_version", "non_retryable", "max_attempts",
               "illegal_transition", "out_of_order_timeout", "too_large")


def _version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])


def _hoist(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic schema with its ``$defs`` moved to ``components.schemas`` (refs rewritten)."""
    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            # AsyncAPI's discriminator is the property's name (OpenAPI's object is not allowed)
            return {k: (v["propertyName"] if k == "discriminator" and isinstance(v, dict) else rewrite(v))
                    for k, v in node.items() if k not in ("$defs", "$schema", "$id")}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        if isinstance(node, str) and node.startswith("#/$defs/"):  # $ref, discriminator mappings
            return "#/components/schemas/" + node[len("#/$defs/"):]
        return node
    for name, d in schema.get("$defs", {}).items():
        defs[name] = rewrite(d)
    return rewrite(schema)


def _ce_headers_schema(event_type: type[Event]) -> dict[str, Any]:
    from streams.events import ce_dataschema, ce_type

    def s(desc: str, **more: Any) -> dict[str, Any]:
        return {"type": "string", "description": desc, **more}
    return {"type": "object", "properties": {
        "ce_specversion": s("CloudEvents spec version", const="1.0"),
        "ce_id": s("the event id", format="uuid"),
        "ce_type": s("the event's type and version; must agree with the topic", const=ce_type(event_type)),
        "ce_source": s("who produced it: /order-streams/orders or /order-streams/<service>"),
        "ce_time": s("the event time (RFC 3339)", format="date-time"),
        "ce_dataschema": s("the committed JSON Schema of the value", const=ce_dataschema(event_type)),
        "content-type": s("the value's media type", const="application/json"),
        "event_id": s("the event id (set by the order service's relay)", format="uuid"),
    }}


def asyncapi(types: Iterable[type[Event]] = EVENT_TYPES) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every channel the project uses: event topics (with
    their payload schemas and CloudEvents headers), the inventory's internal topics, and
    each service's retry tiers, DLQ and redrive ledger; one operation per service and
    channel it receives from or sends to."""
    from streams import registry
    from tables.inventory import ANSWER, StockCommand

    defs: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    by_topic: dict[str, str] = {}

    def channel(cid: str, address: str, msgs: list[str], description: str, **more: Any) -> None:
        channels[cid] = {"address": address, "description": description,
                         "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in msgs}, **more}
        by_topic[address] = cid

    for t in types:
        name = f"{t.type_name()}.v{t.schema_version}"
        messages[name] = {
            "name": t.type_name(), "title": f"{t.type_name()} v{t.schema_version}",
            "summary": (t.__doc__ or t.type_name()).strip().splitlines()[0],
            "contentType": "application/json",
            "headers": _ce_headers_schema(t),
            "payload": _hoist(t.model_json_schema(mode="validation"), defs),
            "correlationId": {"location": "$message.payload#/order_id",
                              "description": "the record key and idempotency key"},
        }
        channel(t.topic().replace(".", "-"), t.topic(), [name], f"{name}, keyed by order id (UTF-8)")
    messages["StockCommand"] = {"name": "StockCommand", "contentType": "application/json",
                                "payload": _hoist(StockCommand.model_json_schema(), defs)}
    messages["InventoryAnswer"] = {"name": "InventoryAnswer", "contentType": "application/json",
                                   "payload": _hoist(ANSWER.json_schema(), defs)}
    channel("inventory-requests", registry.INVENTORY_REQUESTS, ["StockCommand"],
            "inventory's repartition by SKU: reserve / release / set commands, keyed by SKU")
    channel("inventory-answers", registry.INVENTORY_ANSWERS, ["InventoryAnswer"],
            "inventory's answers per order: the expected SKUs, then one answer per SKU, keyed by order id")
    messages["RetryRecord"] = {
        "name": "RetryRecord", "summary": "the source record's key and value verbatim, plus retry headers",
        "headers": {"type": "object", "properties": {k: {"type": "string", "description": d}
                                                     for k, d in _ENGINE_HEADERS.items()}},
        "payload": {"description": "the source record's bytes, unchanged"},
    }
    messages["DeadLetter"] = {
        "name": "DeadLetter", "summary": "the source record's key and value verbatim, plus DLQ headers",
        "headers": {"type": "object", "properties": {
            **{k: {"type": "string", "description": d} for k, d in _ENGINE_HEADERS.items()},
            "x-dlq-reason": {"type": "string", "enum": list(DLQ_REASONS)},
            "x-original-size": {"type": "string", "description": "a shrunk letter: the value's size"},
            "x-original-sha256": {"type": "string", "description": "a shrunk letter: the value's digest"},
        }},
        "payload": {"description": "the source record's bytes (a letter too large: its first bytes)"},
    }
    messages["RedriveMark"] = {"name": "RedriveMark", "summary": "dlq redrive's ledger: one record per redriven letter",
                               "payload": {"type": "object"}}
    operations: dict[str, Any] = {}
    for spec in registry.SERVICES:
        channel(f"{spec.name}-retry", f"{spec.name}.retry.{{tier}}", ["RetryRecord"],
                f"{spec.name}'s retry tiers, 1..len(RETRY_DELAYS)",
                parameters={"tier": {"description": "the retry tier, from 1"}})
        channel(f"{spec.name}-dlq", spec.dlq, ["DeadLetter"], f"{spec.name}'s dead letters")
        channel(f"{spec.name}-dlq-redriven", spec.ledger, ["RedriveMark"], f"{spec.name}'s redrive ledger")
        for topic in spec.sources:
            operations[f"{spec.name}.receive.{topic}"] = {
                "action": "receive", "channel": {"$ref": f"#/channels/{by_topic[topic]}"},
                "summary": f"{spec.name} consumes {topic}"}
        for topic in spec.derived:
            operations[f"{spec.name}.send.{topic}"] = {
                "action": "send", "channel": {"$ref": f"#/channels/{by_topic[topic]}"},
                "summary": f"{spec.name} produces {topic}"}
        for suffix, action in (("retry", "send"), ("dlq", "send")):
            operations[f"{spec.name}.{action}.{suffix}"] = {
                "action": action, "channel": {"$ref": f"#/channels/{spec.name}-{suffix}"}}
        operations[f"{spec.name}.receive.retry"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{spec.name}-retry"}}
    orders_send = sorted({t.topic() for t in types if t.domain == "order"})
    for topic in orders_send:
        operations[f"orders.send.{topic}"] = {"action": "send", "channel": {"$ref": f"#/channels/{by_topic[topic]}"},
                                              "summary": "the order service's relay publishes its outbox rows"}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "order-streams", "version": _version(),
                 "description": "Order events on Kafka and the worker's services that consume them. "
                                "Generated by `faust -A streams schema export`; do not edit."},
        "defaultContentType": "application/json",
        "servers": {"kafka": {"host": "127.0.0.1:9092", "protocol": "kafka",
                              "description": "KAFKA_BROKER (the development default)"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs},
    }


_ASYNCAPI_BYTES: bytes | None = None


def asyncapi_bytes() -> bytes:
    """:func:`asyncapi` as ``docs/asyncapi.json`` holds it (built once per process)."""
    global _ASYNCAPI_BYTES
    if _ASYNCAPI_BYTES is None:
        _ASYNCAPI_BYTES = dumps(asyncapi()).encode()
    return _ASYNCAPI_BYTES
