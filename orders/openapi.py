"""OpenAPI 3.1 description of an aiohttp API, built from its route table and pydantic models.

The API registers its routes from the same :class:`Route` list this module describes,
so a route cannot be served without being documented. Schemas come from pydantic
(``models_json_schema``, JSON Schema 2020-12 — the dialect of OpenAPI 3.1): request
models in validation mode, response models in serialization mode.

``/docs`` is rendered here, on the server, as plain HTML (no script, no stylesheet
or font from elsewhere), so it works on a machine without internet.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Response:
    description: str
    model: type[BaseModel] | None = None
    #: media type of the body; a model is always ``application/json``
    media_type: str = "application/json"
    #: response headers: name → (description, JSON schema)
    headers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str
    summary: str
    responses: dict[int, Response]
    request: type[BaseModel] | None = None
    description: str = ""
    #: JSON schema of each ``{name}`` in the path
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    #: request headers the operation reads: name → (description, JSON schema)
    header_params: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


def openapi(routes: Sequence[Route], *, title: str, version: str, description: str = "") -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = []
    for r in routes:
        if r.request is not None:
            models.append((r.request, "validation"))
        models += [(resp.model, "serialization") for resp in r.responses.values() if resp.model is not None]
    models = list(dict.fromkeys(models))
    refs, defs = models_json_schema(models, ref_template=REF) if models else ({}, {})

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "operationId": r.handler,
            "summary": r.summary,
            "responses": {
                str(status): _response(resp, refs) for status, resp in sorted(r.responses.items())
            },
        }
        if r.description:
            op["description"] = r.description
        if r.tags:
            op["tags"] = list(r.tags)
        params = re.findall(r"{(\w+)}", r.path)
        parameters = [
            {"name": p, "in": "path", "required": True, "schema": r.path_params.get(p, {"type": "string"})}
            for p in params
        ] + [
            {"name": name, "in": "header", "required": False, "description": desc, "schema": schema}
            for name, (desc, schema) in r.header_params.items()
        ]
        if parameters:
            op["parameters"] = parameters
        if r.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(r.request, "validation")]}},
            }
        paths.setdefault(r.path, {})[r.method.lower()] = op
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, **({"description": description} if description else {})},
        "paths": paths,
    }
    if defs:
        spec["components"] = {"schemas": defs.get("$defs", {})}
    return spec


def _response(resp: Response, refs: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": resp.description}
    if resp.headers:
        out["headers"] = {name: {"description": desc, "schema": schema} for name, (desc, schema) in resp.headers.items()}
    if resp.model is not None:
        out["content"] = {"application/json": {"schema": refs[(resp.model, "serialization")]}}
    elif resp.media_type != "application/json":
        out["content"] = {resp.media_type: {"schema": {"type": "string"}}}
    return out


def docs_html(spec: dict[str, Any], *, spec_url: str = "/openapi.json") -> str:
    """A self-contained page listing every operation, its parameters, body and answers."""
    e = html.escape
    schemas = spec.get("components", {}).get("schemas", {})
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(spec['info']['title'])} — API</title>",
        "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "code,pre{font:13px ui-monospace,monospace}pre{background:#f5f5f5;padding:.6rem;overflow:auto}"
        ".m{display:inline-block;min-width:4rem;font-weight:bold}section{border-top:1px solid #ddd;padding:.4rem 0}"
        "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}</style>",
        "</head><body>",
        f"<h1>{e(spec['info']['title'])} <small>{e(spec['info']['version'])}</small></h1>",
        f"<p>{e(spec['info'].get('description', ''))}</p>",
        f'<p>Machine-readable description: <a href="{e(spec_url)}">{e(spec_url)}</a> (OpenAPI {e(spec["openapi"])}).</p>',
        "<h2>Operations</h2>",
    ]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append(f'<section id="{e(op["operationId"])}"><h3><span class="m">{e(method.upper())}</span>'
                       f"<code>{e(path)}</code></h3><p>{e(op['summary'])}</p>")
            if op.get("description"):
                out.append(f"<p>{e(op['description'])}</p>")
            for p in op.get("parameters", []):
                out.append(f"<p>{e(p['in'])} parameter <code>{e(p['name'])}</code>: <code>{e(json.dumps(p['schema']))}</code></p>")
            if "requestBody" in op:
                for media, content in op["requestBody"]["content"].items():
                    out.append(f"<p>request body ({e(media)}): {_schema_link(content['schema'])}</p>")
            out.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
            for status, resp in op["responses"].items():
                bodies = ", ".join(f"{e(media)} {_schema_link(c['schema'])}" for media, c in resp.get("content", {}).items())
                out.append(f"<tr><td>{e(status)}</td><td>{e(resp['description'])}</td><td>{bodies}</td></tr>")
            out.append("</table></section>")
    out.append("<h2>Schemas</h2>")
    for name, schema in schemas.items():
        out.append(f'<section id="schema-{e(name)}"><h3>{e(name)}</h3>'
                   f"<pre>{e(json.dumps(schema, indent=2))}</pre></section>")
    out.append("</body></html>")
    return "\n".join(out)


def _schema_link(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    return f"<code>{html.escape(json.dumps(schema))}</code>"
