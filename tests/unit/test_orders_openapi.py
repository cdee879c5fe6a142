"""GET /openapi.json describes every route of the order API with its request and
response schemas (from the pydantic models the handlers use); GET /docs is a page
that works offline."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from orders.api import OrdersApi
from orders.db import SqliteDatabase
from orders.metrics import OrdersMetrics
from streams.events import ID_PATTERN, MAX_ITEMS, MAX_QTY

VALID = {"user_id": "u-1", "items": [{"sku": "sku-1", "qty": 2}], "amount": "12.50"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    db = SqliteDatabase(str(tmp_path / "orders.db"))
    await db.setup()
    api = OrdersApi(db, OrdersMetrics())
    async with TestClient(TestServer(api.app())) as c:
        yield c
    await db.close()


async def spec_of(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    return await resp.json()


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/components/schemas/"), ref
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def served_routes(client: TestClient) -> set[tuple[str, str]]:
    app = client.server.app
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None}


async def test_every_served_route_is_described_and_nothing_else(client: TestClient) -> None:
    spec = await spec_of(client)
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] and spec["info"]["version"]
    described = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert described == served_routes(client)
    assert {("POST", "/orders"), ("POST", "/orders/{order_id}/pay"), ("POST", "/orders/{order_id}/cancel"),
            ("GET", "/orders/{order_id}"), ("GET", "/outbox/stats"), ("GET", "/metrics"), ("GET", "/health"),
            ("GET", "/openapi.json"), ("GET", "/docs")} <= described
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (method, path)
            params = re.findall(r"{(\w+)}", path)
            assert [p["name"] for p in op.get("parameters", []) if p["in"] == "path"] == params


async def test_create_documents_its_bounded_request_and_its_answers(client: TestClient) -> None:
    spec = await spec_of(client)
    op = spec["paths"]["/orders"]["post"]
    body = resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["required"]) == {"user_id", "items", "amount"}
    assert body["additionalProperties"] is False
    assert body["properties"]["user_id"]["pattern"] == ID_PATTERN
    items = body["properties"]["items"]
    assert items["minItems"] == 1 and items["maxItems"] == MAX_ITEMS
    item = resolve(spec, items["items"])
    assert item["properties"]["qty"]["maximum"] == MAX_QTY
    assert item["properties"]["sku"]["maxLength"] == 128
    assert {"201", "413", "415", "422"} <= set(op["responses"])
    created = resolve(spec, op["responses"]["201"]["content"]["application/json"]["schema"])
    assert created["properties"].keys() == {"order_id"}
    error = resolve(spec, op["responses"]["422"]["content"]["application/json"]["schema"])
    assert {"error", "detail"} <= error["properties"].keys()


async def test_path_ids_and_transition_answers_are_documented(client: TestClient) -> None:
    spec = await spec_of(client)
    for path in ("/orders/{order_id}/pay", "/orders/{order_id}/cancel"):
        op = spec["paths"][path]["post"]
        [param] = [p for p in op["parameters"] if p["in"] == "path"]
        assert param["required"] is True
        assert param["schema"]["pattern"] == ID_PATTERN
        assert {"202", "400", "404", "409"} <= set(op["responses"])
        answer = resolve(spec, op["responses"]["202"]["content"]["application/json"]["schema"])
        assert answer["properties"].keys() == {"order_id", "status"}
    assert {"200", "400", "404"} <= set(spec["paths"]["/orders/{order_id}"]["get"]["responses"])
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


async def test_every_write_documents_its_idempotency_key(client: TestClient) -> None:
    spec = await spec_of(client)
    for path in ("/orders", "/orders/{order_id}/pay", "/orders/{order_id}/cancel"):
        op = spec["paths"][path]["post"]
        [key] = [p for p in op["parameters"] if p["in"] == "header"]
        assert key["name"] == "Idempotency-Key" and key["required"] is False
        assert key["schema"]["maxLength"] == 255
        assert {"400", "409", "422"} <= set(op["responses"])
        ok = op["responses"]["201" if path == "/orders" else "202"]
        assert ok["headers"]["Idempotent-Replayed"]["schema"] == {"type": "string", "enum": ["true"]}
    # The documented pattern accepts what the service accepts.
    pattern = spec["paths"]["/orders"]["post"]["parameters"][0]["schema"]["pattern"]
    for key, accepted in (("k-1", True), ('"k 1"', True), ("k 1", False), ('"k', False)):
        assert bool(re.fullmatch(pattern, key)) is accepted, key
        created = await client.post("/orders", json=VALID, headers={"Idempotency-Key": key})
        assert (created.status == 201) is accepted, key


async def test_the_answers_have_the_documented_shape(client: TestClient) -> None:
    """The handlers build their answers from the documented models: keys match."""
    spec = await spec_of(client)

    def props(path: str, method: str, status: int) -> set[str]:
        schema = spec["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
        return set(resolve(spec, schema)["properties"])

    created = await client.post("/orders", json=VALID)
    order_id = (await created.json())["order_id"]
    assert set(await created.json()) == props("/orders", "post", 201)
    got = await (await client.get(f"/orders/{order_id}")).json()
    assert set(got) == props("/orders/{order_id}", "get", 200)
    paid = await (await client.post(f"/orders/{order_id}/pay")).json()
    assert set(paid) == props("/orders/{order_id}/pay", "post", 202)
    stats = await (await client.get("/outbox/stats")).json()
    assert set(stats) == props("/outbox/stats", "get", 200)
    conflict = await (await client.post(f"/orders/{order_id}/cancel")).json()
    assert set(conflict) <= props("/orders/{order_id}/cancel", "post", 409)


async def test_docs_is_an_offline_page_that_points_at_the_description(client: TestClient) -> None:
    resp = await client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert 'href="/openapi.json"' in page
    for path in (await spec_of(client))["paths"]:
        assert f"<code>{path}</code>" in page
    assert "CreateOrder" in page
    # Nothing fetched from elsewhere: no scripts, no remote stylesheets, fonts or images.
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
