"""orders.settings.load_orders_settings: defaults, env parsing, one-line exit-2 errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orders.settings import OrdersSettings, load_orders_settings
from streams.settings import SettingsError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {n.upper() for n in OrdersSettings.model_fields}
    for var in list(os.environ):
        if var.upper() in names:
            monkeypatch.delenv(var)


def test_defaults() -> None:
    s = load_orders_settings()
    assert s.database_url == "sqlite:///./data/orders.db"
    assert s.orders_port == 8000
    assert s.relay_enabled is True
    assert s.bootstrap == "127.0.0.1:9092"
    assert s.relay_max_request_bytes == 1024 * 1024  # aiokafka's own default
    assert s.orders_max_body_bytes == 64 * 1024
    assert s.relay_port == 8001
    assert (s.relay_in_flight, s.relay_batch_bytes) == (4, 1024 * 1024)
    assert s.outbox_stats_interval == 5.0
    assert (s.log_format, s.log_level) == ("text", "INFO")


@pytest.mark.parametrize(
    "url", ["sqlite:////tmp/x/orders.db", "sqlite:///./o.db", "postgres://u:p@h/db", "postgresql://h:5432/db"]
)
def test_supported_database_urls(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_orders_settings().database_url == url


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_PORT", "8123")
    monkeypatch.setenv("KAFKA_BROKER", "kafka://k1:9092,kafka://k2:9092")
    monkeypatch.setenv("RELAY_ENABLED", "false")
    monkeypatch.setenv("RELAY_ID", "relay-7")
    monkeypatch.setenv("RELAY_MAX_REQUEST_BYTES", "65536")
    monkeypatch.setenv("RELAY_PORT", "9101")
    monkeypatch.setenv("RELAY_IN_FLIGHT", "16")
    monkeypatch.setenv("RELAY_BATCH_BYTES", "65536")
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    s = load_orders_settings()
    assert (s.relay_max_request_bytes, s.relay_port, s.log_format, s.log_level) == (65536, 9101, "json", "DEBUG")
    assert s.orders_port == 8123
    assert s.bootstrap == "k1:9092,k2:9092"
    assert s.relay_enabled is False
    assert s.relay_id == "relay-7"
    assert (s.relay_in_flight, s.relay_batch_bytes) == (16, 65536)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "sqlite:///"),
        ("DATABASE_URL", "orders.db"),
        ("ORDERS_PORT", "0"),
        ("ORDERS_PORT", "70000"),
        ("ORDERS_PORT", "http"),
        ("RELAY_BATCH_SIZE", "0"),
        ("RELAY_IN_FLIGHT", "0"),
        ("RELAY_IN_FLIGHT", "17"),
        ("RELAY_BATCH_BYTES", "1000"),
        ("RELAY_SEND_TIMEOUT", "0"),
        ("IDEMPOTENCY_TTL", "0"),
        ("SQLITE_SYNCHRONOUS", "OFF"),
        ("RELAY_POLL_INTERVAL", "inf"),
        ("RELAY_MAX_REQUEST_BYTES", "100"),
        ("ORDERS_MAX_BODY_BYTES", "10"),
        ("RELAY_PORT", "0"),
        ("OUTBOX_STATS_INTERVAL", "0"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_bad_value_exits_2_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as info:
        load_orders_settings()
    assert isinstance(info.value, SettingsError)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert var in lines[0]
    assert value in lines[0]


def test_only_the_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    monkeypatch.setenv("ORDERS_PORT", "8001")
    with pytest.raises(SystemExit):
        load_orders_settings()
    err = capsys.readouterr().err
    assert "DATABASE_URL" in err and "ORDERS_PORT" not in err


def test_the_process_exits_2_on_a_bad_database_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in OrdersSettings.model_fields}}
    env["DATABASE_URL"] = "mysql://x"
    proc = subprocess.run(
        [sys.executable, "-m", "orders", "serve"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "DATABASE_URL" in lines[0]


# A DATABASE_URL that libpq would read otherwise than meant is one line, secrets masked
# (issue 23 item 7). The password is "s3cr" + something; none of it may be printed.
MISREAD_URLS = [
    ("postgresql://orders:s3cr@t@db.internal:5432/orders", "unencoded '@'"),
    ("postgresql://orders:s3cr@t@@db.internal/orders", "unencoded '@'"),
    ("postgresql://orders:s3cr/t@db.internal/orders", "unencoded '/'"),
    ("postgresql://orders:s3cret/orders", "port is not a number"),
    ("postgres://orders:s3cr%zzt@db.internal/orders", "does not parse"),
]


@pytest.mark.parametrize("url, words", MISREAD_URLS)
def test_a_database_url_that_would_be_misread_is_one_line_with_the_password_masked(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, words: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SystemExit) as exc:
        load_orders_settings()
    assert exc.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "DATABASE_URL" in line and words in line and "%40" in line
    assert "s3cr" not in line and "t@db" not in line


@pytest.mark.parametrize("url", MISREAD_URLS[:3])
def test_the_worker_refuses_the_same_database_url_for_reconcile(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: tuple[str, str]) -> None:
    from streams.settings import load_settings

    monkeypatch.setenv("DATABASE_URL", url[0])
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert exc.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "DATABASE_URL" in line and url[1] in line
    assert "s3cr" not in line


@pytest.mark.parametrize("url", [
    "postgresql://orders:s3cr%40t@db.internal:5432/orders",  # the '@' encoded
    "postgresql://orders:p%2Fw%3F%23@db/orders",
    "postgresql://orders:pa?ss@db/orders",  # libpq takes '?' and '#' in a password as meant
    "postgresql://h1:5432,h2:5433/db?sslmode=require",
    "postgresql:///db?host=/var/run/postgresql",
    "postgresql://[::1]:5432/db",
])
def test_database_urls_that_parse_as_meant_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_orders_settings().database_url == url
