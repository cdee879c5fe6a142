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

Internal messages (inventory's commands and answers, the redrive ledger's records: each a
:class:`~streams.events.Message`) have committed schemas under the same rules; their
models live outside this package, so the full list is
:func:`streams.ops.asyncapi.schema_types` — what the export writes and the gate's test
checks (the defaults here are the events').

The committed file is the published version, so regenerating it must not launder a
change: the export refuses to overwrite a committed ``vN`` the model breaks
(:func:`refusals`), and :func:`published_changes` holds every committed file against
the version git first recorded for it, as Buf compares against git (a file edited by
hand, or deleted and exported again, is caught there:
tests/integration/test_schema_history.py).

:func:`asyncapi` describes every channel (event topics with payload schemas and
CloudEvents headers, the inventory's internal topics, retry tiers, DLQs, redrive
ledgers) as AsyncAPI 3.0; the export writes it to ``docs/asyncapi.json`` and the worker
serves it at ``/asyncapi.json``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from streams.events import EVENT_TYPES, UPCASTERS, Message, chain_gaps

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas"

#: Keywords that only document: a change to them is not a change of the schema.
DOC_KEYWORDS = frozenset({"title", "description", "examples", "$comment"})

#: Keywords whose larger value accepts more (upper bounds) / fewer (lower bounds).
UPPER_BOUNDS = frozenset({"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"})
LOWER_BOUNDS = frozenset({"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"})


def schema_name(event_type: type[Message]) -> str:
    """``order.paid.v1``: the schema's name (file ``schemas/order.paid.v1.json``)."""
    return f"{event_type.domain}.{event_type.name}.v{event_type.schema_version}"


def schema_path(event_type: type[Message]) -> str:
    """The schema's path in the repository, also its ``$id`` and ``ce_dataschema``."""
    return f"schemas/{schema_name(event_type)}.json"


def schema_of(event_type: type[Message]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the event as it is read (pydantic's validation mode)."""
    schema = event_type.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_path(event_type),
            **schema}


def dumps(doc: Any) -> str:
    """Stable text: sorted keys, two-space indent, a final newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render(types: Iterable[type[Message]] = EVENT_TYPES) -> dict[str, str]:
    """File name → text of every event's schema."""
    return {f"{schema_name(t)}.json": dumps(schema_of(t)) for t in types}


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


def gate(types: Iterable[type[Message]] = EVENT_TYPES, committed: Path = SCHEMA_DIR,
         upcasters: Mapping[tuple[str, str, int], Callable[..., Any]] = UPCASTERS) -> list[str]:
    """Problems that stop a change from shipping: a committed ``vN`` schema the model
    no longer matches (each broken rule, named) and gaps in the upcaster chains.
    A version with no committed file yet is new: it is the exporter's to write."""
    types = tuple(types)
    problems = list(chain_gaps(types, upcasters))
    for t, old, new in _published_pairs(types, committed):
        found = breaking_changes(old, new)
        if not found:
            found = [f"jsoncompat: {role} incompatible" for role in _jsoncompat_verdict(old, new)]
        problems.extend(f"{schema_name(t)} is published and frozen; {p}" for p in found)
    return problems


def refusals(types: Iterable[type[Message]] = EVENT_TYPES, committed: Path = SCHEMA_DIR) -> list[str]:
    """What the export must not write: each committed ``vN`` the model no longer
    matches, with the rule it breaks (the gate's named rules; no ``jsoncompat``, which
    is a test dependency). Empty: every file may be (re)written."""
    return [f"{schema_name(t)} is published and frozen; {p}"
            for t, old, new in _published_pairs(tuple(types), committed) for p in breaking_changes(old, new)]


def _published_pairs(types: tuple[type[Message], ...], committed: Path
                     ) -> list[tuple[type[Message], dict[str, Any], dict[str, Any]]]:
    """(model, its committed schema, its schema now) for every model with a committed
    file; a version with no file yet is new: it is the exporter's to write."""
    out = []
    for t in types:
        path = committed / f"{schema_name(t)}.json"
        if path.exists():
            out.append((t, json.loads(path.read_text(encoding="utf-8")), schema_of(t)))
    return out


# -- against git ------------------------------------------------------------------------------


class HistoryUnavailable(RuntimeError):
    """:func:`published_changes` cannot see what was published (no git, not a repository,
    or a shallow clone: fetch the whole history, e.g. ``fetch-depth: 0``)."""


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise HistoryUnavailable(f"git: {exc}") from None
    if done.returncode != 0:
        raise HistoryUnavailable(f"git {args[0]}: {done.stderr.strip()[:300]}")
    return done.stdout


def published_changes(root: Path = ROOT) -> list[str]:
    """Every committed ``schemas/*.json`` held against the version of it that git first
    recorded (the published one), by the gate's rules; a schema git once recorded that
    is gone now is a problem too. Empty when nothing published changed beyond
    title/description. Raises :class:`HistoryUnavailable` when the history is not there
    (a shallow clone would compare a file with itself and pass)."""
    if _git(root, "rev-parse", "--is-shallow-repository").strip() != "false":
        raise HistoryUnavailable("a shallow clone: the published schemas are not in it (fetch the whole history)")
    recorded = sorted({line for line in _git(root, "log", "--format=", "--name-only", "--diff-filter=A", "HEAD",
                                             "--", "schemas/").splitlines() if line.endswith(".json")})
    problems: list[str] = []
    for rel in recorded:
        name = rel.rsplit("/", 1)[-1].removesuffix(".json")
        current = root / rel
        if not current.exists():
            problems.append(f"{name} was published and its schema is gone: restore {rel}")
            continue
        first = _git(root, "log", "--format=%H", "--diff-filter=A", "HEAD", "--", rel).split()[-1]
        old = json.loads(_git(root, "show", f"{first}:{rel}"))
        new = json.loads(current.read_text(encoding="utf-8"))
        problems.extend(f"{name} is published (git {first[:12]}) and frozen; {p}" for p in breaking_changes(old, new))
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
