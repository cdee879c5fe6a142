"""streams.settings: defaults from the contract, env parsing, one-line start-up errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import SettingsError, WorkerSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment the tests run in."""
    names = {n.upper() for n in WorkerSettings.model_fields}
    for var in list(os.environ):
        if var.upper() in names:
            monkeypatch.delenv(var)


def test_defaults_match_the_contract() -> None:
    s = load_settings()
    assert s.kafka_broker == "kafka://127.0.0.1:9092"
    assert s.web_port == 6066
    assert s.data_dir == Path("./data")
    assert s.dedup_ttl == 86400
    assert s.retry_delays == (5.0, 30.0, 300.0)
    assert s.notifier_url == ""
    assert s.park_timeout == 300
    assert s.rpc_timeout == 0.2
    assert s.rpc_max_in_flight == 100
    assert s.web_url == "http://127.0.0.1:6066"


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KAFKA_BROKER": "kafka://k1:9092,k2:9092",
        "WEB_PORT": "7001",
        "DATA_DIR": "/var/lib/streams",
        "DEDUP_TTL": "3600",
        "RETRY_DELAYS": "1,2.5, 10",
        "NOTIFIER_URL": "http://sms.local/send",
        "PARK_TIMEOUT": "12",
        "RPC_TIMEOUT": "0.5",
        "RPC_MAX_IN_FLIGHT": "7",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.kafka_broker == "kafka://k1:9092,k2:9092"
    assert s.web_port == 7001
    assert s.data_dir == Path("/var/lib/streams")
    assert s.dedup_ttl == 3600
    assert s.retry_delays == (1.0, 2.5, 10.0)
    assert s.notifier_url == "http://sms.local/send"
    assert s.park_timeout == 12
    assert s.rpc_timeout == 0.5
    assert s.rpc_max_in_flight == 7
    assert s.web_url == "http://127.0.0.1:7001"


def test_retry_delays_single_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_DELAYS", "7")
    assert load_settings().retry_delays == (7.0,)


def test_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PORT", "7001")
    assert load_settings(web_port=7002).web_port == 7002


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DEDUP_TTL", "abc"),
        ("DEDUP_TTL", "0"),
        ("DEDUP_TTL", "-5"),
        ("WEB_PORT", "70000"),
        ("WEB_PORT", "0"),
        ("WEB_PORT", "http"),
        ("RETRY_DELAYS", "1,x"),
        ("RETRY_DELAYS", "5,-1"),
        ("NOTIFIER_URL", "ftp://x"),
        ("NOTIFIER_URL", "sms.local"),
        ("KAFKA_BROKER", "127.0.0.1:9092"),
        ("RPC_TIMEOUT", "0"),
        ("RPC_MAX_IN_FLIGHT", "0"),
        ("PARK_TIMEOUT", "-1"),
    ],
)
def test_bad_value_exits_2_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert info.value.code == 2
    assert isinstance(info.value, SettingsError)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert var in lines[0]


def test_only_the_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WEB_PORT", "70000")
    monkeypatch.setenv("DEDUP_TTL", "60")
    with pytest.raises(SystemExit):
        load_settings()
    err = capsys.readouterr().err
    assert "WEB_PORT" in err and "DEDUP_TTL" not in err
    assert "70000" in err


@pytest.mark.parametrize(("var", "value"), [("DEDUP_TTL", "inf"), ("RETRY_DELAYS", "5,nan"), ("RETRY_DELAYS", "inf")])
def test_non_finite_numbers_are_rejected(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit):
        load_settings()
    assert var in capsys.readouterr().err


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.web_port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.retry_delays = (1.0,)  # type: ignore[misc]
    assert s.web_port == 6066


def test_bad_setting_stops_the_app_import_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in WorkerSettings.model_fields}}
    env["DEDUP_TTL"] = "abc"
    proc = subprocess.run(
        [sys.executable, "-c", "import streams; streams.app"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "DEDUP_TTL" in lines[0]
    assert proc.stdout == ""


def test_settings_error_masks_the_database_password(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed DATABASE_URL was once printed whole, password included."""
    from streams.settings import SettingsError, load_settings

    with pytest.raises(SettingsError):
        load_settings(database_url="mysql://orders:hunter2@db:5432/orders")
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "DATABASE_URL" in err and "***@db" in err
    assert len(err.strip().splitlines()) == 1


def test_settings_error_never_prints_a_secret_variable(capsys: pytest.CaptureFixture[str]) -> None:
    from streams.settings import SettingsError, load_settings

    with pytest.raises(SettingsError):
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u",
                      kafka_sasl_password=12345678)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "12345678" not in err
