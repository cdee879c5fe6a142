"""Operator commands: ``faust -A streams dlq ls|show|redrive``, ``reconcile``, ``seed-stock``.

``dlq`` is a click group registered with Faust's command line (``faust.cli.cli``);
``ls``, ``show`` and ``redrive`` are Faust commands (:class:`OpsCommand`, an
``AppCommand`` made by ``app.command``) attached to that group, each with its own
``--help``. Every command here:

- prints errors as ONE line on stderr (``faust dlq ls: error: …``), never a
  traceback (``--debug`` adds one, and the libraries' logs);
- exits 0 on success, 1 on a failure (broker or worker unreachable, no such dead
  letter), 2 on a usage error (bad option value, unknown service, missing id);
  ``reconcile`` exits 3 when it finds mismatches (see :data:`EXIT_MISMATCHES`);
- takes ``--json`` (as does Faust's global ``faust --json``) on listings: one JSON
  document on stdout, text only (escaped by the JSON encoder, never raw bytes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, ClassVar, NoReturn

import click
from faust.cli import argument, option
from faust.cli.base import AppCommand
from faust.cli.base import cli as faust_cli

from streams.ops import dlq
from streams.faust.compat import apply_click_options
from streams import registry

#: Exit codes (documented in the README's Commands section).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: ``reconcile`` found mismatches (with ``--repair`` too: it re-published what missing
#: and stuck orders need, and the next run tells whether they converged). Distinct from
#: 1 so that cron and CI can tell "the system diverged" from "reconcile could not check".
EXIT_MISMATCHES = 3

#: ``dlq ls`` shows this many dead letters unless ``--limit`` says otherwise.
LS_DEFAULT_LIMIT = 100
#: ``dlq show`` cuts a value's text at this many characters unless ``--full``.
SHOW_VALUE_CHARS = 4000
#: … and reads this many bytes of it (a character is at most 4 bytes of UTF-8).
SHOW_PREVIEW_BYTES = 4 * SHOW_VALUE_CHARS
#: ``dlq redrive --dry-run`` prints its table every this many rows (it streams).
TABLE_CHUNK = 200
#: ``dlq redrive`` names at most this many refused letters per service (then counts them).
MAX_REFUSED_LINES = 100




def one_line(text: str) -> str:
    return dlq.printable(" ".join(str(text).split()))


# ---------------------------------------------------------------------------------------
# Click plumbing: one-line errors, exit codes


class CommandFailed(click.ClickException):
    """A failure (exit 1), printed as one line on stderr."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, command_path: str = "faust") -> None:
        super().__init__(one_line(message))
        self.command_path = command_path

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.command_path}: error: {self.message}", file=file or sys.stderr, err=True)


class OneLineUsageError(click.UsageError):
    """A usage error (exit 2), one line on stderr, instead of click's usage block."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        path = self.ctx.command_path if self.ctx is not None else "faust"
        hint = f" (see {path} --help)"
        click.echo(f"{path}: error: {one_line(self.format_message())}{hint}", file=file or sys.stderr, err=True)


def _one_line_usage(exc: click.UsageError, ctx: click.Context | None = None) -> click.UsageError:
    if isinstance(exc, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return exc  # (a group without a subcommand prints its help, as click does)
    return OneLineUsageError(exc.format_message(), exc.ctx or ctx)


class OneLineCommand(click.Command):
    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None


class OneLineGroup(click.Group):
    command_class = OneLineCommand

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None


class OpsCommand(AppCommand):
    """A Faust app command that runs on a plain event loop (no ``faust.Worker``: no
    banner, no signal-driven service tree), reports failures in one line and exits
    with :attr:`exit_code`. ``click_group``: the group to join (default: Faust's
    top-level ``faust`` command); ``click_name``: its name there."""

    abstract: ClassVar[bool] = True
    click_group: ClassVar[click.Group | None] = None
    click_name: ClassVar[str | None] = None

    exit_code: int = EXIT_OK

    @classmethod
    def as_click_command(cls) -> Callable:
        @click.pass_context
        def _inner(ctx: click.Context, **kwargs: Any) -> NoReturn:
            cls(ctx, **kwargs)()

        _inner.__name__ = cls.__name__
        parent = cls.click_group if cls.click_group is not None else faust_cli
        name = cls.click_name or cls.__name__.replace("_", "-")
        command = parent.command(name=name, cls=OneLineCommand, help=cls.__doc__)(_inner)
        return apply_click_options(cls.options or [])(command)

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        path = self.ctx.command_path
        restore_logging = _quiet_logging(self.debug, self.state.loglevel)
        try:
            asyncio.run(self.execute(*args, **{**self.kwargs, **kwargs}))
        except BrokenPipeError:  # `… | head`: the reader has gone; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.ctx.exit(EXIT_FAILURE)
        except click.UsageError as exc:
            raise _one_line_usage(exc, self.ctx) from None
        except CommandFailed:
            raise
        except click.ClickException as exc:
            raise CommandFailed(exc.format_message(), path) from None
        except KeyboardInterrupt:
            click.echo(f"{path}: interrupted", err=True)
            self.ctx.exit(130)
        except Exception as exc:
            if self.debug:
                traceback.print_exc(file=sys.stderr)
            raise CommandFailed(_describe(exc), path) from None
        finally:
            restore_logging()
        self.ctx.exit(self.exit_code)

    def fail(self, message: str) -> NoReturn:
        raise CommandFailed(message, self.ctx.command_path)

    def emit_json(self, obj: Any) -> None:
        self.say(json.dumps(obj, ensure_ascii=True))


def _describe(exc: BaseException) -> str:
    if getattr(exc, "operator_message", False):  # dlq.DlqError, reconcile.ReconcileError
        return str(exc)
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _quiet_logging(debug: bool, loglevel: str | None) -> Callable[[], None]:
    """The libraries' logs (aiokafka's connection errors, …) stay out of a command's
    output unless ``--debug`` or an explicit ``--loglevel`` asks for them. Returns
    what undoes it (the command may run inside another program, e.g. a test)."""
    if debug or loglevel:
        level = "DEBUG" if debug else {"CRIT": "CRITICAL", "WARN": "WARNING"}.get(
            str(loglevel).upper(), str(loglevel).upper())
        logging.basicConfig(level=level, stream=sys.stderr)
        return lambda: None
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    return lambda: logging.disable(before)


# ---------------------------------------------------------------------------------------
# Parameter types


class Since(click.ParamType):
    """``15m``, ``2h``, ``1d``, ``30s`` ago or an ISO 8601 time → epoch milliseconds."""

    name = "15m|2h|1d|ISO-TIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        try:
            return dlq.parse_since(str(value))
        except ValueError:
            self.fail(f"{value!r}: expected 15m, 2h, 1d, 30s or an ISO 8601 time like 2026-01-31T08:00", param, ctx)


class LetterId(click.ParamType):
    """``<service>.dlq:<partition>:<offset>``."""

    name = "ID"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            dlq.parse_id(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


SINCE = Since()
LETTER_ID = LetterId()


def service_option(help: str) -> option:
    return option("--service", type=click.Choice(registry.SERVICE_NAMES), default=None, show_default=False,
                  help=help)


JSON_OPTION = option("--json", "as_json", is_flag=True, default=False, show_default=False,
                     help="print one JSON document instead of text")


# ---------------------------------------------------------------------------------------


def register_commands(app: Any, settings: Any) -> None:
    """Every operator command on ``app`` and Faust's command line: ``dlq ls|show|redrive``,
    ``seed-stock``, ``reconcile`` and ``schema export``, each reaching Kafka with the
    worker's connection ``settings``."""
    kafka = dict(settings.aiokafka_kwargs())
    dlq.CLIENT_KWARGS.update(kafka)

    group = OneLineGroup(
        "dlq",
        help=("Inspect and redrive dead letters (<service>.dlq topics).\n\n"
              "A dead letter's ID is <service>.dlq:<partition>:<offset>. Errors are one line on stderr; "
              "exit 0 ok, 1 failure, 2 usage error."),
        short_help="Inspect and redrive dead letters: dlq ls | show ID… | redrive.",
    )
    faust_cli.add_command(group)
    register_dlq_ls(app, group, settings, kafka)
    register_dlq_show(app, group, settings, kafka)
    register_dlq_redrive(app, group, settings, kafka)
    register_seed_stock(app, settings, kafka)
    register_reconcile(app, settings)
    register_schema_commands(app)


def letter_filters() -> list[Any]:
    """The options that choose dead letters, shared by ``dlq ls`` and ``dlq redrive``."""
    return [
        service_option("only this service's dead letters (default: every service)"),
        option("--reason", default=None, show_default=False, help="only this x-dlq-reason, e.g. max_attempts"),
        option("--since", type=SINCE, default=None, show_default=False, metavar="15m|2h|1d|ISO-TIME",
               help="only dead letters that failed after 15m / 2h / 1d ago, or an ISO time"),
    ]


def register_dlq_ls(app: Any, group: click.Group, settings: Any, kafka: dict[str, Any]) -> None:
    """``faust -A streams dlq ls``."""
    bootstrap = settings.bootstrap

    @app.command(
        *letter_filters(),
        option("--limit", type=click.IntRange(min=1), default=LS_DEFAULT_LIMIT,
               help="show at most this many; a last line says when more exist"),
        option("--after", type=LETTER_ID, default=None, show_default=False,
               help="start after this dead letter ID (the next page)"),
        JSON_OPTION,
        base=OpsCommand, click_group=group, click_name="ls",
    )
    async def dlq_ls(self: OpsCommand, service: str | None, reason: str | None, since: int | None,
                     limit: int, after: str | None, as_json: bool) -> None:
        """List dead letters: id, reason, attempt, time, source, key, error.

        Reads the DLQ topics a partition at a time and stops after --limit letters
        (default 100); page on with --after <last id>.
        """
        if after and service and dlq.parse_id(after)[0].name != service:
            raise click.BadParameter(f"{after!r} is not a dead letter of {service}", param_hint="'--after'")
        await settings.check_access(bootstrap)  # refused credentials: one line, not "unreachable"
        letters, next_after = await dlq.page(bootstrap, service, limit=limit, reason=reason, since_ms=since,
                                             after=after, client_kwargs=kafka, preview_bytes=dlq.LIST_PREVIEW_BYTES)
        if self.json or as_json:
            self.emit_json({"dead_letters": [d.summary() for d in letters], "count": len(letters),
                            "more": next_after is not None, "next_after": next_after})
            return
        if letters:
            self.say(self.tabulate(
                [d.row() for d in letters],
                headers=["ID", "REASON", "ATTEMPT", "FAILED AT (UTC)", "SOURCE", "KEY", "ERROR"],
                wrap_last_row=False,
            ))
        if next_after is not None:
            self.say(f"{len(letters)} dead letters shown; more exist: next page with --after {next_after}")
        else:
            self.say(f"{len(letters)} dead letters")


def register_dlq_show(app: Any, group: click.Group, settings: Any, kafka: dict[str, Any]) -> None:
    """``faust -A streams dlq show ID…``."""
    bootstrap = settings.bootstrap

    @app.command(
        argument("ids", nargs=-1, required=True, type=LETTER_ID, metavar="ID..."),
        option("--full", is_flag=True, default=False, show_default=False,
               help=f"the whole value (default: its first {SHOW_VALUE_CHARS} characters)"),
        JSON_OPTION,
        base=OpsCommand, click_group=group, click_name="show",
    )
    async def dlq_show(self: OpsCommand, ids: tuple[str, ...], full: bool, as_json: bool) -> None:
        """Show dead letters by ID: fields, headers and value.

        ID is <service>.dlq:<partition>:<offset> (as dlq ls prints it); each is read
        with one seek, not a scan. Text is escaped (control characters as \\x1b, \\n, …),
        bytes that are not UTF-8 are shown as hex. Exits 1 when an ID has no dead letter.
        """
        # Memory: previews of every id first (is each there?), then whole values one
        # letter at a time (--full, --json), each written before the next is read.
        await settings.check_access(bootstrap)
        found = await dlq.get_dead_letters(bootstrap, ids, client_kwargs=kafka, preview_bytes=SHOW_PREVIEW_BYTES)
        missing = [i for i, d in found.items() if d is None]
        if missing:
            self.fail(f"no dead letter {', '.join(missing)}")
        previews = [d for d in found.values() if d is not None]

        async def whole(d: dlq.DeadLetter) -> dlq.DeadLetter:
            if not d.is_preview:
                return d
            again = (await dlq.get_dead_letters(bootstrap, [d.id], client_kwargs=kafka))[d.id]
            if again is None:
                self.fail(f"no dead letter {d.id} (removed while shown)")
            return again

        if self.json or as_json:
            self.say('{"dead_letters": [', nl=False)
            for n, d in enumerate(previews):
                self.say((", " if n else "") + json.dumps((await whole(d)).to_dict(), ensure_ascii=True), nl=False)
            self.say("]}")
            return
        for d in previews:
            show_letter(self, await whole(d) if full else d, full)


def show_letter(cmd: OpsCommand, d: dlq.DeadLetter, full: bool) -> None:
    """``dlq show``'s text for one letter: its fields, its headers, its value (cut at
    :data:`SHOW_VALUE_CHARS` characters unless ``full``), every text escaped."""
    s = d.summary()
    fields = [
        ("reason", dlq.printable(d.reason)), ("attempt", dlq.printable(d.attempt)),
        ("failed at", s["failed_at"]), ("source", dlq.printable(d.source())),
        ("error type", dlq.printable(s["error"]["type"])),
        ("error message", dlq.printable(s["error"]["message"])),
        ("key", dlq.show_bytes(d.key)),
        ("value bytes", "-" if d.value_length is None else str(d.value_length)),
    ]
    cmd.say(cmd.tabulate(fields, headers=["FIELD", "VALUE"], title=d.id, wrap_last_row=False))
    items = d.header_items or tuple(d.headers.items())
    cmd.say(cmd.tabulate([(dlq.printable(k), dlq.show_bytes(v)) for k, v in items],
                         headers=["HEADER", "VALUE"], wrap_last_row=False))
    cmd.say("value:")
    shown = dlq.show_bytes(d.value, None if full else SHOW_VALUE_CHARS)
    if d.is_preview and not shown.endswith(" bytes)"):
        shown += f"… ({d.value_length} bytes)"
    cmd.say(shown)
    cmd.say("")


def register_dlq_redrive(app: Any, group: click.Group, settings: Any, kafka: dict[str, Any]) -> None:
    """``faust -A streams dlq redrive``."""
    bootstrap = settings.bootstrap

    @app.command(
        *letter_filters(),
        option("--limit", type=click.IntRange(min=1), default=None, show_default=False,
               help="redrive at most this many (default: every match)"),
        option("--dry-run", is_flag=True, default=False, show_default=False,
               help="send nothing: list each letter that would be redriven (id, reason, target topic)"),
        JSON_OPTION,
        base=OpsCommand, click_group=group, click_name="redrive",
    )
    async def dlq_redrive(self: OpsCommand, service: str | None, reason: str | None, since: int | None,
                          limit: int | None, dry_run: bool, as_json: bool) -> None:
        """Republish dead letters to their source topic, each at most once ever.

        A letter goes only to one of its own service's source topics (its
        x-source-topic chooses among them); a letter naming any other topic is
        reported as refused and never sent. Each redriven letter is recorded in
        <service>.dlq.redriven after its send is acknowledged and skipped by every
        later redrive; runs at the same time claim each letter there first and only
        the first claim sends. Streams the DLQ topics; --dry-run lists what would be sent.
        """
        await settings.check_access(bootstrap)
        as_json = self.json or as_json
        out = _RedriveOutput(self, as_json, dry_run)
        remaining = limit
        for name in ([service] if service else registry.SERVICE_NAMES):
            if remaining is not None and remaining <= 0:
                break
            bar = None
            if not dry_run and not as_json and not self.quiet:
                total = await dlq.record_count(bootstrap, name, client_kwargs=kafka)
                bar = click.progressbar(length=total, label=f"redrive {name}", file=self.stderr,
                                        show_pos=True)
                bar.__enter__()
            try:
                result = await dlq.redrive(
                    bootstrap, name, reason=reason, since_ms=since, limit=remaining, dry_run=dry_run,
                    on_outcome=out.outcome, on_scanned=bar.update if bar else None, client_kwargs=kafka,
                )
            finally:
                if bar is not None:
                    bar.__exit__(None, None, None)
            out.service_done(result)
            if remaining is not None:
                remaining -= result.redriven + result.planned
        out.end()


#: ``ce_source`` of the ``seed-stock`` command's records.
SEED_STOCK_SOURCE = "/order-streams/seed-stock"


def seed_stock_records(raw: Any, now_ms: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """``(key, value, headers)`` of the ``set`` commands for ``{"sku": quantity, …}``
    (a ``ValueError``/``TypeError``/``AttributeError`` for anything else), each with the
    CloudEvents headers (``ce_type`` ``inventory.command.v1``, ``ce_time`` ``now_ms``).
    Rule for ``ce_id``: every command of a run is a new record (a later run setting the
    same SKU is another command), so each gets a new id, made here once — a retried
    send resends these bytes, id included."""
    from streams.events import message_headers, new_event_id
    from tables.inventory import StockCommand

    commands = [StockCommand(kind="set", sku=sku, qty=qty) for sku, qty in raw.items()]
    return [(c.sku.encode(), c.model_dump_json().encode(),
             list(message_headers(StockCommand, str(new_event_id()), SEED_STOCK_SOURCE, now_ms)))
            for c in commands]


def register_seed_stock(app: Any, settings: Any, kafka: dict[str, Any]) -> None:
    """``faust -A streams seed-stock FILE``."""
    bootstrap = settings.bootstrap

    @app.command(argument("file", type=click.Path(exists=True, dir_okay=False)), base=OpsCommand,
                 click_name="seed-stock")
    async def seed_stock(self: OpsCommand, file: str) -> None:
        """Set available stock per SKU from a JSON file {"sku": quantity, …}."""
        import time

        from aiokafka import AIOKafkaProducer

        try:
            raw = json.loads(open(file, encoding="utf-8").read())
            records = seed_stock_records(raw, int(time.time() * 1000))
        except (ValueError, AttributeError, TypeError) as exc:
            raise click.UsageError(f"{file}: expected a JSON object of SKU → quantity ({one_line(str(exc))})")
        await settings.check_access(bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kafka)
        try:
            await producer.start()
        except Exception as exc:
            await producer.stop()
            self.fail(f"Kafka broker {bootstrap} unreachable ({dlq.describe(exc)})")
        try:
            acks = [await producer.send(registry.INVENTORY_REQUESTS, key=key, value=value, headers=headers)
                    for key, value, headers in records]
            for ack in acks:
                await ack
        finally:
            await producer.stop()
        self.say(f"stock set for {len(records)} SKUs")


def register_reconcile(app: Any, settings: Any) -> None:
    """``faust -A streams reconcile``."""

    @app.command(
        option("--since", type=SINCE, default=None, show_default=False, metavar="15m|2h|1d|ISO-TIME",
               help="only orders created after 15m / 2h / 1d ago, or an ISO time"),
        option("--sla", type=click.FloatRange(min=0), default=60.0, show_default=True,
               help="seconds an order may lag before it counts as missing or stuck"),
        option("--repair", is_flag=True, default=False, show_default=False,
               help="re-publish what missing and stuck orders need, through the outbox"),
        option("--worker-url", default=None, show_default=False,
               help="a worker's web URL (default: this worker's, from WEB_HOST/WEB_PORT/CANONICAL_URL)"),
        option("--metrics-file", default=None, show_default=False,
               help="write reconciliation_mismatches{kind} here (default: DATA_DIR/reconcile.prom)"),
        option("--created-version", type=click.Choice(["1", "2"]), default="1", envvar="ORDER_EVENTS_VERSION",
               show_default=True, help="OrderCreated version --repair publishes (default: ORDER_EVENTS_VERSION)"),
        JSON_OPTION,
        base=OpsCommand, click_name="reconcile",
    )
    async def reconcile(self: OpsCommand, since: int | None, sla: float, repair: bool,
                        worker_url: str | None, metrics_file: str | None, created_version: str,
                        as_json: bool) -> None:
        """Compare the order service's orders with the workers' order states.

        Prints missing / stuck / diverged orders and writes reconciliation_mismatches
        for node_exporter's textfile collector. Exit 0: no mismatches; 3: mismatches
        found (with --repair too: the next run tells whether the repair converged);
        1: could not check (database or worker unreachable); 2: usage error.
        """
        from pathlib import Path

        from orders.db import open_database
        from streams.ops import reconcile as rc

        db = open_database(settings.database_url)
        await db.setup()
        try:
            mismatches, total = await rc.reconcile(db, (worker_url or settings.web_url).rstrip("/"),
                                                   since=since / 1000 if since is not None else None, sla=sla)
            target = Path(metrics_file) if metrics_file else Path(settings.data_dir) / "reconcile.prom"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rc.prometheus_text(mismatches))
            added = await rc.repair(db, mismatches, created_version=int(created_version),
                                    currency=settings.default_currency) if repair else None
        finally:
            await db.close()
        if mismatches:
            self.exit_code = EXIT_MISMATCHES
        if self.json or as_json:
            self.emit_json({**rc.report_json(mismatches, total, added), "exit_code": self.exit_code})
            return
        if mismatches:
            self.say(self.tabulate(rc.report_rows(mismatches), headers=list(rc.REPORT_HEADERS),
                                   wrap_last_row=False))
        self.say(rc.summary(mismatches, total))
        if added is not None:
            self.say(f"repair: {added} events re-published through the outbox")


def register_schema_commands(app: Any) -> None:
    """``faust -A streams schema export``: the event schemas from the models (issue 22)."""
    group = OneLineGroup("schema", help="Event schemas and the AsyncAPI document, generated: schema export.",
                         short_help="Event schemas: schema export.")
    faust_cli.add_command(group)

    @app.command(
        option("--root", type=click.Path(file_okay=False), default=None, show_default=False,
               help="write under this directory (default: the repository)"),
        base=OpsCommand, click_group=group, click_name="export",
    )
    async def schema_export(self: OpsCommand, root: str | None) -> None:
        """Write schemas/<domain>.<event>.v<N>.json and docs/asyncapi.json from the models (commit them)."""
        from pathlib import Path

        from streams.events.schemas import ROOT
        from streams.ops.asyncapi import FrozenSchema, export

        try:
            written = export(Path(root) if root else ROOT)
        except FrozenSchema as refused:  # nothing written: make a vN+1 instead
            raise click.ClickException(f"nothing written: {refused}") from None
        self.say(f"{len(written)} files written under {Path(root) if root else ROOT}")


class _RedriveOutput:
    """What ``dlq redrive`` prints while it streams: JSON pieces, or tables of up to
    :data:`TABLE_CHUNK` rows (dry run) and one line per refused letter."""

    def __init__(self, cmd: OpsCommand, as_json: bool, dry_run: bool) -> None:
        self.cmd, self.as_json, self.dry_run = cmd, as_json, dry_run
        self.rows: list[tuple[str, ...]] = []
        self.first = True
        self.begun = False
        self.refused: list[str] = []
        self.refused_more = 0
        self.results: dict[str, dict[str, int]] = {}

    def begin(self) -> None:
        """JSON starts with the first thing to say (a failure before it leaves stdout empty)."""
        if self.as_json and not self.begun:
            self.cmd.say(f'{{"dry_run": {json.dumps(self.dry_run)}, "letters": [', nl=False)
        self.begun = True

    def outcome(self, o: dlq.Outcome) -> None:
        self.begin()
        if self.as_json:
            self.cmd.say(("" if self.first else ",") + "\n" + json.dumps(o.to_dict(), ensure_ascii=True), nl=False)
            self.first = False
        elif self.dry_run:
            if o.action == "refused":
                row = (o.letter.id, dlq.printable(o.letter.reason), "REFUSE", o.why)
            else:
                row = (o.letter.id, dlq.printable(o.letter.reason), "redrive", f"to {o.target}")
            self.rows.append(row)
            if len(self.rows) >= TABLE_CHUNK:
                self.flush()
        elif o.action == "refused":  # said after the progress bar
            if len(self.refused) < MAX_REFUSED_LINES:
                self.refused.append(f"refused {o.letter.id}: {o.why}")
            else:
                self.refused_more += 1

    def flush(self) -> None:
        if self.rows:
            self.cmd.say(self.cmd.tabulate(self.rows, headers=["ID", "REASON", "DRY RUN", "WHERE / WHY"],
                                           wrap_last_row=False))
            self.rows = []

    def service_done(self, r: dlq.RedriveResult) -> None:
        self.begin()
        self.results[r.service] = r.to_dict()
        if self.as_json:
            return
        self.flush()
        for line in self.refused:
            self.cmd.say(line)
        if self.refused_more:
            self.cmd.say(f"refused: {self.refused_more} more (dlq redrive --dry-run --json lists them all)")
        self.refused, self.refused_more = [], 0
        if self.dry_run:
            self.cmd.say(f"{r.service}: would redrive {r.planned}, already redriven {r.skipped}, refused {r.refused}")
        else:
            self.cmd.say(f"{r.service}: redriven {r.redriven}, already redriven {r.skipped}, refused {r.refused}")

    def end(self) -> None:
        self.begin()
        if self.as_json:
            self.cmd.say("\n" + f'], "services": {json.dumps(self.results)}}}')


__all__ = ["register_commands", "OpsCommand", "CommandFailed", "EXIT_OK", "EXIT_FAILURE",
           "EXIT_USAGE", "EXIT_MISMATCHES"]

