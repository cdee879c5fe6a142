"""Operator commands: ``faust -A streams dlq ls|show|redrive``."""

from __future__ import annotations

from typing import Any

import click
from faust.cli import argument, option

from streams import dlq
from tables.inventory import REQUESTS_TOPIC, StockCommand


def bootstrap_of(kafka_broker: str) -> str:
    return ",".join(h.split("://", 1)[-1] for h in kafka_broker.split(","))


def register_commands(app: Any, settings: Any) -> None:
    bootstrap = bootstrap_of(settings.kafka_broker)
    dlq.CLIENT_KWARGS.update(settings.aiokafka_kwargs())

    @app.command(
        argument("action", type=click.Choice(["ls", "show", "redrive"])),
        argument("ids", nargs=-1),
        option("--service", type=click.Choice(list(dlq.SERVICES)), default=None,
               help="only this service's dead letters (default: every service)"),
        option("--reason", default=None, help="only this x-dlq-reason, e.g. max_attempts"),
        option("--since", default=None, help="only dead letters newer than 15m / 2h / 1d / an ISO time"),
        option("--limit", type=int, default=None, help="redrive at most this many"),
        option("--dry-run", is_flag=True, default=False, help="show what redrive would do"),
    )
    async def dlq_command(
        self: Any, action: str, ids: tuple[str, ...], service: str | None, reason: str | None,
        since: str | None, limit: int | None, dry_run: bool,
    ) -> None:
        """Inspect and redrive dead letters: dlq ls | dlq show ID… | dlq redrive."""
        try:
            since_ms = dlq.parse_since(since) if since else None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        services = [service] if service else list(dlq.SERVICES)
        letters = []
        for name in services:
            letters += dlq.select(await dlq.dead_letters(bootstrap, name), reason=reason, since_ms=since_ms)
        if action == "ls":
            self.say(dlq.format_table(letters))
            self.say(f"{len(letters)} dead letters")
        elif action == "show":
            wanted = set(ids)
            found = [d for d in letters if d.id in wanted]
            for d in found:
                self.say(dlq.format_one(d) + "\n")
            missing = wanted - {d.id for d in found}
            if missing:
                raise click.ClickException(f"no dead letter named {', '.join(sorted(missing))}")
        else:
            total = 0
            for name in services:
                mine = [d for d in letters if d.service == name]
                result = await dlq.redrive(
                    bootstrap, name, mine, limit=limit, dry_run=dry_run, progress=dlq.progress_bar()
                )
                verb = "would redrive" if dry_run else "redriven"
                count = result.planned if dry_run else result.redriven
                self.say(f"{name}: {verb} {count}, already redriven {result.skipped}")
                total += count
                if limit is not None:
                    limit -= count
                    if limit <= 0:
                        break

    @app.command(argument("file", type=click.Path(exists=True, dir_okay=False)))
    async def seed_stock(self: Any, file: str) -> None:
        """Set available stock per SKU from a JSON file {"sku": quantity, …}."""
        import json

        from aiokafka import AIOKafkaProducer

        try:
            raw = json.loads(open(file, encoding="utf-8").read())
            commands = [StockCommand(kind="set", sku=sku, qty=qty) for sku, qty in raw.items()]
        except (ValueError, AttributeError, TypeError) as exc:
            raise click.ClickException(f"{file}: expected a JSON object of SKU → quantity ({exc})") from None
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **settings.aiokafka_kwargs())
        await producer.start()
        try:
            acks = [await producer.send(REQUESTS_TOPIC, key=c.sku.encode(), value=c.model_dump_json().encode())
                    for c in commands]
            for ack in acks:
                await ack
        finally:
            await producer.stop()
        self.say(f"stock set for {len(commands)} SKUs")

    @app.command(
        option("--since", default=None, help="only orders created after 15m / 2h / 1d / an ISO time"),
        option("--sla", type=float, default=60.0, show_default=True,
               help="seconds an order may lag before it counts as missing or stuck"),
        option("--repair", is_flag=True, default=False,
               help="re-publish what missing and stuck orders need, through the outbox"),
        option("--worker-url", default=None, help="a worker's web URL (default: this worker's)"),
        option("--metrics-file", default=None,
               help="write reconciliation_mismatches{kind} here (default: DATA_DIR/reconcile.prom)"),
    )
    async def reconcile(self: Any, since: str | None, sla: float, repair: bool,
                        worker_url: str | None, metrics_file: str | None) -> None:
        """Compare the order service's orders with the workers' order states."""
        from pathlib import Path

        from orders.db import open_database
        from streams import reconcile as rc

        try:
            since_s = dlq.parse_since(since) / 1000 if since else None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        db = open_database(settings.database_url)
        await db.setup()
        try:
            mismatches, total = await rc.reconcile(db, worker_url or settings.web_url, since=since_s, sla=sla)
            self.say(rc.format_report(mismatches, total))
            target = Path(metrics_file) if metrics_file else Path(settings.data_dir) / "reconcile.prom"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rc.prometheus_text(mismatches))
            if repair:
                added = await rc.repair(db, mismatches)
                self.say(f"repair: {added} events re-published through the outbox")
        finally:
            await db.close()
