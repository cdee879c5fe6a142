"""Settings errors mask secrets (issue 12: "a malformed DATABASE_URL is printed whole,
password included"). A bad value stops the process with one line naming the
variable (exit 2); whatever is wrong with a URL, its password is never on it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from orders.settings import OrdersSettings
from streams.settings import WorkerSettings, describe_error
from harness.worker import ROOT

SECRET = "hunter2-S3cr3t"

#: Malformed DATABASE_URLs an operator could type, each with ``SECRET`` in it.
MALFORMED_DATABASE_URLS = {
    "wrong-scheme": f"mysql://admin:{SECRET}@db:5432/orders",
    "scheme-typo": f"postgresq://admin:{SECRET}@db:5432/orders",
    "leading-space": f" postgresql://admin:{SECRET}@db/orders",
    "trailing-newline": f"postgresql://admin:{SECRET}@db/orders\n",
    "missing-colon": f"postgresql//admin:{SECRET}@db/orders",
    "one-slash": f"postgresql:/admin:{SECRET}@db/orders",
    "unencoded-at-in-password": f"mysql://admin:p@{SECRET}@db/orders",
    "unencoded-space-in-password": f"mysql://admin:pa {SECRET}@db/orders",
}


def one_line_error(model: type, **values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        model(**values)
    return describe_error(caught.value)


@pytest.mark.parametrize("model", [WorkerSettings, OrdersSettings], ids=["worker", "orders"])
@pytest.mark.parametrize("url", list(MALFORMED_DATABASE_URLS.values()), ids=list(MALFORMED_DATABASE_URLS))
def test_malformed_database_url_error_never_shows_the_password(model: type, url: str) -> None:
    line = one_line_error(model, database_url=url)
    assert "DATABASE_URL" in line and "\n" not in line.strip()
    assert SECRET not in line, line
    assert SECRET[:6] not in line, line


@pytest.mark.parametrize("model", [WorkerSettings, OrdersSettings], ids=["worker", "orders"])
def test_malformed_kafka_broker_with_credentials_is_masked(model: type) -> None:
    line = one_line_error(model, kafka_broker=f"kafka://user:{SECRET}@broker:9092 extra")
    assert "KAFKA_BROKER" in line and SECRET not in line, line


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KAFKA_BROKER": "kafka://127.0.0.1:1", **env})


@pytest.mark.parametrize("argv", [["-m", "faust", "-A", "streams", "worker"], ["-m", "orders", "serve"],
                                  ["-m", "faust", "-A", "streams", "dlq", "ls"]],
                         ids=["worker", "orders-serve", "dlq-ls"])
def test_processes_stop_with_one_masked_line_and_exit_2_on_a_malformed_database_url(argv: list[str]) -> None:
    result = run(argv, DATABASE_URL=MALFORMED_DATABASE_URLS["wrong-scheme"])
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "DATABASE_URL" in lines[0], result.stderr[-2000:]
    assert SECRET not in result.stderr + result.stdout
