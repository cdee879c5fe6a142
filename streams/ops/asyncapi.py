"""The AsyncAPI 3.0 document of every channel the project uses (``docs/asyncapi.json``,
served by the worker at ``/asyncapi.json``), generated from the registry and the event
models; and the export of it with the JSON Schemas (``schema export``) of the events and
of the internal messages (:func:`message_types`: inventory's commands and answers, the
redrive ledger's records), which are frozen by the same gate once committed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streams import registry
from streams.engine.topology import ServiceSpec
from streams.events import EVENT_TYPES, Event, Message, ce_dataschema, ce_type
from streams.events.schemas import ROOT, dumps, refusals, render

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


def message_types() -> tuple[type[Message], ...]:
    """The internal messages with committed schemas, beside :data:`EVENT_TYPES`."""
    from streams.ops.dlq import RedriveClaim, RedriveDone
    from tables.inventory import MESSAGE_TYPES

    return (*MESSAGE_TYPES, RedriveClaim, RedriveDone)


def schema_types() -> tuple[type[Message], ...]:
    """Every model with a committed schema: what the gate checks and the export writes."""
    return (*EVENT_TYPES, *message_types())


def _ce_headers_schema(event_type: type[Message]) -> dict[str, Any]:
    def s(desc: str, **more: Any) -> dict[str, Any]:
        return {"type": "string", "description": desc, **more}
    if issubclass(event_type, Event):
        ce_id = s("the event id", format="uuid")
        source = s("who produced it: /order-streams/orders or /order-streams/<service>")
        at = s("the event time (RFC 3339)", format="date-time")
        extra = {"event_id": s("the event id (set by the order service's relay)", format="uuid")}
    else:
        ce_id = s("the record's id: derived from what it is about (order, kind, SKU; a claim), the same on a "
                  "replay or a retried send", format="uuid")
        source = s("who produced it: /order-streams/<service>, /order-streams/seed-stock, "
                   "/order-streams/dlq-redrive")
        at = s("the record's time (RFC 3339): that of the record that caused it", format="date-time")
        extra = {}
    return {"type": "object", "properties": {
        "ce_specversion": s("CloudEvents spec version", const="1.0"),
        "ce_id": ce_id,
        "ce_type": s("the type and version; must agree with the topic and payload (else a dead letter)",
                     const=ce_type(event_type)),
        "ce_source": source,
        "ce_time": at,
        "ce_dataschema": s("the committed JSON Schema of the value", const=ce_dataschema(event_type)),
        "content-type": s("the value's media type", const="application/json"),
        **extra,
    }}


def _internal_message(t: type[Message], defs: dict[str, Any]) -> dict[str, Any]:
    return {"name": t.__name__, "title": f"{t.__name__} v{t.schema_version}",
            "summary": (t.__doc__ or t.__name__).strip().splitlines()[0], "contentType": "application/json",
            "headers": _ce_headers_schema(t), "payload": _hoist(t.model_json_schema(mode="validation"), defs)}


def _engine_messages() -> dict[str, Any]:
    """The records the engine writes for every service: retries, dead letters, redrive marks."""
    messages: dict[str, Any] = {}
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
    return messages


def _operations_of(spec: ServiceSpec, by_topic: dict[str, str]) -> dict[str, Any]:
    """One operation per channel ``spec``'s service receives from or sends to."""
    operations: dict[str, Any] = {}
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
    return operations


def asyncapi(types: Iterable[type[Event]] = EVENT_TYPES) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every channel the project uses: event topics (with
    their payload schemas and CloudEvents headers), the inventory's internal topics, and
    each service's retry tiers, DLQ and redrive ledger; one operation per service and
    channel it receives from or sends to."""
    from streams.ops.dlq import RedriveClaim, RedriveDone
    from tables.inventory import Expected, SkuAnswer, StockCommand

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
    for m in message_types():
        messages[f"{m.__name__}.v{m.schema_version}"] = _internal_message(m, defs)
    channel("inventory-requests", registry.INVENTORY_REQUESTS, [f"{StockCommand.__name__}.v1"],
            "inventory's repartition by SKU: reserve / release / set commands, keyed by SKU")
    channel("inventory-answers", registry.INVENTORY_ANSWERS, [f"{Expected.__name__}.v1", f"{SkuAnswer.__name__}.v1"],
            "inventory's answers per order: the expected SKUs, then one answer per SKU, keyed by order id")
    messages.update(_engine_messages())
    operations: dict[str, Any] = {}
    for spec in registry.SERVICES:
        channel(f"{spec.name}-retry", f"{spec.name}.retry.{{tier}}", ["RetryRecord"],
                f"{spec.name}'s retry tiers, 1..len(RETRY_DELAYS)",
                parameters={"tier": {"description": "the retry tier, from 1"}})
        channel(f"{spec.name}-dlq", spec.dlq, ["DeadLetter"], f"{spec.name}'s dead letters")
        channel(f"{spec.name}-dlq-redriven", spec.ledger, [f"{RedriveClaim.__name__}.v1", f"{RedriveDone.__name__}.v1"],
                f"{spec.name}'s redrive ledger: claims and done records, keyed by the letter's id")
        operations.update(_operations_of(spec, by_topic))
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


class FrozenSchema(Exception):
    """The export refused: a model no longer matches its published (committed) ``vN``."""


def export(root: Path = ROOT, types: Iterable[type[Event]] = EVENT_TYPES,
           messages: Iterable[type[Message]] | None = None) -> list[Path]:
    """Write ``schemas/*.json`` (events ``types`` and internal ``messages``, by default
    :func:`message_types`) and ``docs/asyncapi.json`` under ``root``; the paths
    written (changed or not). Writes nothing and raises :class:`FrozenSchema` (one line
    per broken rule) when a model breaks its committed ``vN`` under ``root``: a
    regenerated file must not hide the change from the gate."""
    types = tuple(types)
    models = (*types, *(message_types() if messages is None else messages))
    refused = refusals(models, root / "schemas")
    if refused:
        raise FrozenSchema("\n".join(refused))
    files = {f"schemas/{name}": text for name, text in render(models).items()}
    files[str(ASYNCAPI_PATH.relative_to(ROOT))] = dumps(asyncapi(types))
    written = []
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
