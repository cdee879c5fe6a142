"""Checks that run an external program on the project's files (each says which with
``needs``: tests/conftest.py), so they are not unit tests: promtool on the Prometheus
config, the AsyncAPI parser (node) on docs/asyncapi.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support" / "asyncapi"
#: what ``schema export`` writes and the worker serves (tests/unit/test_asyncapi.py checks that)
ASYNCAPI = ROOT / "docs" / "asyncapi.json"
#: npm installs the parser here once (outside the repository), then reuses it.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "order-streams" / "asyncapi-parser"


@pytest.mark.needs("promtool")
def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    assert promtool  # needs() failed the test already if not
    result = subprocess.run([promtool, "check", "config", str(ROOT / "deploy/prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.needs("node", "npm")
def test_the_document_validates_with_the_asyncapi_parser(tmp_path):
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node  # needs() failed the test already if not
    wanted = json.loads((SUPPORT / "package.json").read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / "package.json").exists() or json.loads((CACHE / "package.json").read_text()) != wanted:
        shutil.copy(SUPPORT / "package.json", CACHE / "package.json")
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=CACHE,
                       check=True, capture_output=True, timeout=300)
    shutil.copy(SUPPORT / "validate.mjs", CACHE / "validate.mjs")
    broken = json.loads(ASYNCAPI.read_text())  # and one the parser must refuse
    broken["components"]["messages"]["SkuAnswer.v1"]["payload"]["discriminator"] = {"propertyName": "kind"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result = subprocess.run([node, str(CACHE / "validate.mjs"), str(ASYNCAPI), str(tmp_path / "broken.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{ASYNCAPI}: parsed: 18 channels" in result.stdout, result.stdout
    assert f"{tmp_path / 'broken.json'}: not valid" in result.stdout and "discriminator" in result.stdout
