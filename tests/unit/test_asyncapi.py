"""docs/asyncapi.json: every channel the project uses, as `schema export` writes it,
served by the worker, and valid for the AsyncAPI parser (issue 22, item 6; the parser runs
on node: tests/integration/test_external_tools.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams import registry

from streams.events import schemas
from streams.ops import asyncapi
from streams.events import EVENT_TYPES, ce_type


def test_the_committed_document_is_what_export_writes():
    assert asyncapi.ASYNCAPI_PATH.read_text(encoding="utf-8") == schemas.dumps(asyncapi.asyncapi()), (
        "docs/asyncapi.json is not what the registry and models generate: "
        "run `faust -A streams schema export` and commit the result")
    assert asyncapi.asyncapi_bytes() == asyncapi.ASYNCAPI_PATH.read_bytes()  # what /asyncapi.json serves


def test_the_export_command_writes_schemas_and_the_document(tmp_path):
    result = subprocess.run([sys.executable, "-m", "faust", "-A", "streams", "schema", "export", "--root", str(tmp_path)],
                            cwd=schemas.ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{len(asyncapi.schema_types()) + 1} files written under {tmp_path}\n"
    assert (tmp_path / "docs" / "asyncapi.json").read_bytes() == asyncapi.ASYNCAPI_PATH.read_bytes()
    for t in asyncapi.schema_types():
        assert (tmp_path / schemas.schema_path(t)).read_bytes() == (schemas.ROOT / schemas.schema_path(t)).read_bytes()


def test_every_topic_of_every_service_is_a_channel_with_its_messages():
    doc = asyncapi.asyncapi()
    addresses = {c["address"]: c for c in doc["channels"].values()}
    for spec in registry.SERVICES:
        for topic in (*spec.sources, *spec.derived, spec.dlq, spec.ledger, f"{spec.name}.retry.{{tier}}"):
            assert topic in addresses, topic
        for topic in spec.sources:
            assert f"{spec.name}.receive.{topic}" in doc["operations"]
    for m in asyncapi.message_types():  # internal messages: their CloudEvents headers and schemas
        message = doc["components"]["messages"][f"{m.__name__}.v{m.schema_version}"]
        assert message["headers"]["properties"]["ce_type"]["const"] == ce_type(m)
        assert set(message["payload"]["required"]) == set(schemas.schema_of(m)["required"])
    for t in EVENT_TYPES:
        [ref] = addresses[t.topic()]["messages"].values()
        message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
        assert message["headers"]["properties"]["ce_type"]["const"] == ce_type(t)
        assert set(message["payload"]["required"]) == set(schemas.schema_of(t)["required"])
    reasons = doc["components"]["messages"]["DeadLetter"]["headers"]["properties"]["x-dlq-reason"]["enum"]
    assert "unknown_version" in reasons
