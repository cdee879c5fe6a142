"""The operator commands as a Click program, without a broker: ``faust dlq ls|show|redrive``
are subcommands with their own ``--help``; errors are one line on stderr with exit 2
(usage) or 1 (failure); ``reconcile`` exits 3 on mismatches, 0 when clean.

Runs Faust's real ``faust`` command group in-process (click's CliRunner) with a bare
Faust app and :func:`streams.ops.commands.register_commands`, as ``create_app`` calls it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import faust
import pytest
from click.testing import CliRunner, Result
from faust.cli.base import cli as faust_cli

from orders.db import open_database
from streams.broker import free_port
from streams.ops.commands import EXIT_FAILURE, EXIT_MISMATCHES, EXIT_OK, EXIT_USAGE, register_commands
from streams.settings import WorkerSettings

Run = Callable[..., Result]


class Worker:
    """A stand-in for a worker's ``GET /orders/{id}``: ``statuses[id]`` or 404."""

    def __init__(self) -> None:
        self.statuses: dict[str, str] = {}
        statuses = self.statuses

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                order_id = self.path.rsplit("/", 1)[-1]
                body = json.dumps({"order_id": order_id, "status": statuses.get(order_id)}).encode()
                self.send_response(200 if order_id in statuses else 404)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


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
    reconcile = run("reconcile", "--help")
    assert reconcile.exit_code == 0
    for opt in ("--since", "--sla", "--repair", "--worker-url", "--metrics-file", "--json", "3:"):
        assert opt in reconcile.stdout


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
    (("reconcile", "--since", "yesterday"), "--since"),
    # issue 23: 400 digits were a 49-line OverflowError traceback
    (("dlq", "ls", "--since", "9" * 400 + "d"), "'--since'"),
    (("dlq", "ls", "--since", "9" * 400), "'--since'"),
    (("dlq", "redrive", "--dry-run", "--since", "9" * 400 + "m"), "--since"),
    (("reconcile", "--since", "9" * 400 + "h"), "--since"),
    (("dlq", "show", "notifications.dlq:0:" + "9" * 5000), "not a dead letter id"),
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


def add_orders(settings: WorkerSettings, *rows: tuple[str, str]) -> None:
    db = open_database(settings.database_url)
    asyncio.run(db.setup())
    asyncio.run(db.close())
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as conn:
        conn.executemany("INSERT INTO orders VALUES (?, 'u-1', '[{\"sku\": \"s-1\", \"qty\": 1}]', '1', ?, 0, 0)",
                         rows)


def test_reconcile_with_the_worker_unreachable_is_one_line_and_exit_1(env):
    run, settings = env
    add_orders(settings, ("o-1", "PAID"))
    line = one_error_line(run("reconcile"), EXIT_FAILURE)
    assert line.startswith(f"faust reconcile: error: worker {settings.web_url} unreachable (")


def test_reconcile_exits_0_when_clean_and_3_on_mismatches_with_json(env, tmp_path):
    run, settings = env
    worker = Worker()
    add_orders(settings, ("o-1", "PAID"), ("o-2", "PAID"), ("o-3", "CREATED"))
    worker.statuses.update({"o-1": "NOTIFIED", "o-2": "NOTIFIED", "o-3": "CREATED"})
    clean = run("reconcile", "--worker-url", worker.url, "--sla", "0")
    assert clean.exit_code == EXIT_OK, clean.stderr
    assert "3 orders checked: 0 missing, 0 stuck, 0 diverged" in clean.stdout

    worker.statuses.update({"o-2": "CREATED", "o-3": "PAID"})  # o-2 stuck, o-3 diverged
    del worker.statuses["o-1"]                                 # o-1 missing
    text = run("reconcile", "--worker-url", worker.url, "--sla", "0")
    assert text.exit_code == EXIT_MISMATCHES and text.stderr == ""
    assert "| o-2   | stuck" in text.stdout  # Faust's table
    as_json = run("reconcile", "--worker-url", worker.url, "--sla", "0", "--json")
    assert as_json.exit_code == EXIT_MISMATCHES
    doc = json.loads(as_json.stdout)
    assert doc["counts"] == {"missing": 1, "stuck": 1, "diverged": 1} and doc["checked"] == 3
    assert {(m["order_id"], m["kind"]) for m in doc["mismatches"]} == {
        ("o-1", "missing"), ("o-2", "stuck"), ("o-3", "diverged")}
    assert doc["exit_code"] == EXIT_MISMATCHES and doc["repaired_events"] is None
    prom = (settings.data_dir / "reconcile.prom").read_text()
    assert 'reconciliation_mismatches{kind="diverged"} 1' in prom

    # --repair re-publishes what missing and stuck orders need; found mismatches still exit 3.
    repaired = run("reconcile", "--worker-url", worker.url, "--sla", "0", "--repair", "--json")
    assert repaired.exit_code == EXIT_MISMATCHES
    assert json.loads(repaired.stdout)["repaired_events"] == 3  # o-1: created + paid; o-2: paid
    worker.statuses.update({"o-1": "NOTIFIED", "o-2": "NOTIFIED", "o-3": "CREATED"})  # converged
    after = run("reconcile", "--worker-url", worker.url, "--sla", "0", "--repair")
    assert after.exit_code == EXIT_OK, after.stdout
    assert "repair: 0 events re-published through the outbox" in after.stdout
