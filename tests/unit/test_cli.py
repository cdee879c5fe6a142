"""The operator commands as a Click program, without a broker: ``faust dlq ls|show|redrive``
are subcommands with their own ``--help``; errors are one line on stderr with exit 2
(usage) or 1 (failure).

Runs Faust's real ``faust`` command group in-process (click's CliRunner) with a bare
Faust app and :func:`streams.commands.register_commands`, as ``create_app`` calls it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import faust
import pytest
from click.testing import CliRunner, Result
from faust.cli.base import cli as faust_cli

from streams.broker import free_port
from streams.commands import EXIT_FAILURE, EXIT_USAGE, register_commands
from streams.settings import WorkerSettings

Run = Callable[..., Result]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Run, WorkerSettings]]:
    # Faust's group reads -A/-W from sys.argv; pytest's own argv must not leak in.
    monkeypatch.setattr(sys, "argv", ["faust"])
    settings = WorkerSettings(
        kafka_broker=f"kafka://127.0.0.1:{free_port()}",  # nothing listens there: a stopped broker
        web_port=free_port(), data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'orders.db'}",
    )
    app = faust.App("cli-test", broker=settings.kafka_broker, datadir=str(tmp_path / "faust"))
    register_commands(app, settings)

    def run(*args: str) -> Result:
        return CliRunner().invoke(faust_cli, list(args), prog_name="faust", app=app, catch_exceptions=False)

    yield run, settings


def one_error_line(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def test_dlq_is_a_group_and_each_subcommand_has_its_own_help(env):
    run, _ = env
    group = run("dlq", "--help")
    assert group.exit_code == 0
    for sub in ("ls", "show", "redrive"):
        assert f"  {sub} " in group.stdout
    ls = run("dlq", "ls", "--help")
    assert ls.exit_code == 0 and "Usage: faust dlq ls [OPTIONS]" in ls.stdout
    for opt in ("--service", "--reason", "--since", "--limit", "--after", "--json", "[default: 100"):
        assert opt in ls.stdout
    assert "inventory" in ls.stdout  # the registry's services, all of them
    show = run("dlq", "show", "--help")
    assert show.exit_code == 0 and "faust dlq show [OPTIONS] ID..." in show.stdout
    redrive = run("dlq", "redrive", "--help")
    assert redrive.exit_code == 0
    for opt in ("--dry-run", "--limit", "--json", "refused"):
        assert opt in redrive.stdout
    assert "--dry-run" not in ls.stdout


@pytest.mark.parametrize("args,says", [
    (("dlq", "show"), "Missing argument 'ID...'"),
    (("dlq", "ls", "--since", "yesterday"), "'--since': 'yesterday'"),
    (("dlq", "redrive", "--since", "yesterday", "--dry-run"), "--since"),
    (("dlq", "ls", "--service", "billing"), "'billing' is not one of 'notifications', 'order-state', 'inventory'"),
    (("dlq", "redrive", "--service", "billing"), "'billing' is not one of"),
    (("dlq", "show", "billing.dlq:0:1"), "not a dead letter id"),
    (("dlq", "show", "notifications.dlq:zero:1"), "not a dead letter id"),
    (("dlq", "ls", "--after", "nope"), "not a dead letter id"),
    (("dlq", "ls", "--service", "inventory", "--after", "notifications.dlq:0:1"), "not a dead letter of inventory"),
    (("dlq", "ls", "--limit", "0"), "--limit"),
    (("dlq", "frobnicate"), "No such command 'frobnicate'"),
])
def test_usage_errors_are_one_line_and_exit_2(env, args, says):
    run, _ = env
    line = one_error_line(run(*args), EXIT_USAGE)
    assert line.startswith(f"faust {args[0]}") and ": error: " in line and line.endswith("--help)")
    assert says in line, line


@pytest.mark.parametrize("args", [
    ("dlq", "ls"),
    ("dlq", "ls", "--service", "inventory", "--json"),
    ("dlq", "show", "notifications.dlq:0:1"),
    ("dlq", "redrive", "--dry-run", "--json"),
    ("dlq", "redrive", "--service", "notifications"),
])
def test_a_stopped_broker_is_one_line_and_exit_1(env, args):
    run, settings = env
    line = one_error_line(run(*args), EXIT_FAILURE)
    address = settings.kafka_broker.split("://", 1)[1]
    assert line == f"faust {args[0]} {args[1]}: error: Kafka broker {address} unreachable (KafkaConnectionError)"
