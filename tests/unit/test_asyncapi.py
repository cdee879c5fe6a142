"""docs/asyncapi.json: every channel the project uses, as `schema export` writes it,
served by the worker, and valid for the AsyncAPI parser (issue 22, item 6)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streams import registry

from streams.events import schemas
from streams.events import EVENT_TYPES, ce_type

SUPPORT = Path(__file__).resolve().parent.parent / "support" / "asyncapi"
#: npm installs the parser here once (outside the repository), then reuses it.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "order-streams" / "asyncapi-parser"


def test_the_committed_document_is_what_export_writes():
    assert schemas.ASYNCAPI_PATH.read_text(encoding="utf-8") == schemas.dumps(schemas.asyncapi()), (
        "docs/asyncapi.json is not what the registry and models generate: "
        "run `faust -A streams schema export` and commit the result")
    assert schemas.asyncapi_bytes() == schemas.ASYNCAPI_PATH.read_bytes()  # what /asyncapi.json serves


def test_the_export_command_writes_schemas_and_the_document(tmp_path):
    result = subprocess.run([sys.executable, "-m", "faust", "-A", "streams", "schema", "export", "--root", str(tmp_path)],
                            cwd=schemas.ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{len(EVENT_TYPES) + 1} files written under {tmp_path}\n"
    assert (tmp_path / "docs" / "asyncapi.json").read_bytes() == schemas.ASYNCAPI_PATH.read_bytes()
    for t in EVENT_TYPES:
        assert (tmp_path / schemas.schema_path(t)).read_bytes() == (schemas.ROOT / schemas.schema_path(t)).read_bytes()


def test_every_topic_of_every_service_is_a_channel_with_its_messages():
    doc = schemas.asyncapi()
    addresses = {c["address"]: c for c in doc["channels"].values()}
    for spec in registry.SERVICES:
        for topic in (*spec.sources, *spec.derived, spec.dlq, spec.ledger, f"{spec.name}.retry.{{tier}}"):
            assert topic in addresses, topic
        for topic in spec.sources:
            assert f"{spec.name}.receive.{topic}" in doc["operations"]
    for t in EVENT_TYPES:
        [ref] = addresses[t.topic()]["messages"].values()
        message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
        assert message["headers"]["properties"]["ce_type"]["const"] == ce_type(t)
        assert set(message["payload"]["required"]) == set(schemas.schema_of(t)["required"])
    reasons = doc["components"]["messages"]["DeadLetter"]["headers"]["properties"]["x-dlq-reason"]["enum"]
    assert "unknown_version" in reasons


def test_the_document_validates_with_the_asyncapi_parser(tmp_path):
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "node and npm are needed to run @asyncapi/parser (apt-get install nodejs npm)"
    wanted = json.loads((SUPPORT / "package.json").read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / "package.json").exists() or json.loads((CACHE / "package.json").read_text()) != wanted:
        shutil.copy(SUPPORT / "package.json", CACHE / "package.json")
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=CACHE,
                       check=True, capture_output=True, timeout=300)
    shutil.copy(SUPPORT / "validate.mjs", CACHE / "validate.mjs")
    broken = json.loads(schemas.ASYNCAPI_PATH.read_text())  # and one the parser must refuse
    broken["components"]["messages"]["InventoryAnswer"]["payload"]["discriminator"] = {"propertyName": "kind"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result = subprocess.run([node, str(CACHE / "validate.mjs"), str(schemas.ASYNCAPI_PATH), str(tmp_path / "broken.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{schemas.ASYNCAPI_PATH}: parsed: 18 channels" in result.stdout, result.stdout
    assert f"{tmp_path / 'broken.json'}: not valid" in result.stdout and "discriminator" in result.stdout
