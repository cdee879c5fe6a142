"""Did the system converge? The order service's orders (the source of truth) against
the workers' order states (``faust -A streams reconcile``).

For each order in the order service's database:

| order service | worker's ``/orders/{id}`` | older than the SLA | kind |
|---|---|---|---|
| any | 404 (never seen) | yes | ``missing`` |
| ``PAID`` | ``CREATED`` or ``PAID`` (not yet notified) | yes | ``stuck`` |
| ``CANCELLED`` | ``CREATED`` | yes | ``stuck`` |
| ``CREATED`` | ``PAID``/``NOTIFIED``; ``CANCELLED`` vs ``PAID`` … | — | ``diverged`` |

Younger than the SLA, a lagging order is in flight and not reported.

``--repair`` re-publishes, through the outbox, the events an order needs to catch up
(``OrderCreated`` for a missing order, then ``OrderPaid`` / ``OrderCancelled`` as its
status says). Consumers deduplicate by order id and by event type, so a repair that
runs twice, or repeats an event that did arrive, changes nothing. Diverged orders
are only reported: they need a person.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote

import aiohttp

from orders import outbox
from orders.db import Database
from streams.events import Event, OrderCancelled, OrderCreated, OrderCreatedV2, OrderItem, OrderPaid, ce_headers
from streams.ops.text import printable

KINDS = ("missing", "stuck", "diverged")
#: kinds ``--repair`` re-publishes events for (diverged orders need a person)
REPAIRABLE = ("missing", "stuck")

#: order-service status → worker statuses that agree with it (final) / that lag behind it.
AGREES = {"CREATED": {"CREATED"}, "PAID": {"NOTIFIED"}, "CANCELLED": {"CANCELLED"}}
LAGS = {"CREATED": {"NEW"}, "PAID": {"NEW", "CREATED", "PAID"}, "CANCELLED": {"NEW", "CREATED"}}


@dataclass(frozen=True)
class OrderRow:
    order_id: str
    user_id: str
    items: tuple[OrderItem, ...]
    amount: Decimal
    status: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Mismatch:
    order_id: str
    kind: str
    source_status: str
    worker_status: str
    age_seconds: float


def classify(row: OrderRow, worker_status: str | None, *, now: float, sla: float) -> str | None:
    """The mismatch kind of one order, or None when it agrees or is still in flight."""
    seen = worker_status or "NEW"
    if seen in AGREES[row.status]:
        return None
    overdue = now - row.updated_at > sla
    if seen in LAGS[row.status]:
        if not overdue:
            return None
        return "missing" if worker_status is None else "stuck"
    return "diverged"


async def load_orders(db: Database, since: float | None) -> list[OrderRow]:
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT order_id, user_id, items, amount, status, created_at, updated_at FROM orders"
            " WHERE created_at >= ? ORDER BY created_at", (since or 0.0,),
        )
    return [
        OrderRow(r[0], r[1], tuple(OrderItem(**i) for i in json.loads(r[2])), Decimal(r[3]), r[4],
                 float(r[5]), float(r[6]))
        for r in rows
    ]


class ReconcileError(Exception):
    """Reconcile could not check (the worker unreachable or answering errors): one line."""

    #: its message is written for an operator (the CLI prints it as it is)
    operator_message = True


async def worker_statuses(web_url: str, order_ids: list[str], concurrency: int = 32,
                          timeout: float = 30.0) -> dict[str, str | None]:
    """``status`` from a worker's ``GET /orders/{id}`` (None: 404, never seen).
    Raises :class:`ReconcileError` when the worker cannot be asked."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, str | None] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async def one(order_id: str) -> None:
            async with sem, session.get(f"{web_url}/orders/{quote(order_id, safe='')}") as resp:
                if resp.status == 404:
                    out[order_id] = None
                    return
                if resp.status != 200:
                    raise ReconcileError(f"worker {web_url} answered HTTP {resp.status} for order {order_id!r}")
                try:
                    out[order_id] = str((await resp.json(content_type=None))["status"])
                except (ValueError, KeyError, TypeError):
                    raise ReconcileError(f"worker {web_url} answered no status for order {order_id!r}") from None

        try:
            await asyncio.gather(*(one(i) for i in order_ids))
        except aiohttp.ClientError as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ReconcileError(f"worker {web_url} unreachable ({detail})") from None
        except asyncio.TimeoutError:
            raise ReconcileError(f"worker {web_url} did not answer within {timeout:.0f} s") from None
    return out


async def reconcile(db: Database, web_url: str, *, since: float | None, sla: float,
                    now: float | None = None) -> tuple[list[Mismatch], int]:
    now = time.time() if now is None else now
    rows = await load_orders(db, since)
    seen = await worker_statuses(web_url, [r.order_id for r in rows])
    mismatches = []
    for row in rows:
        kind = classify(row, seen[row.order_id], now=now, sla=sla)
        if kind:
            mismatches.append(Mismatch(row.order_id, kind, row.status, seen[row.order_id] or "-",
                                       now - row.updated_at))
    return mismatches, len(rows)


def repair_events(row: OrderRow, worker_status: str, *, created_version: int = 1,
                  currency: str = "EUR") -> list[Event]:
    """Events that bring the workers' view of ``row`` up to the order service's.
    ``OrderCreated`` in ``created_version`` (``ORDER_EVENTS_VERSION``, as the order service
    writes it, so a repair is no v1 producer once v1 is retired); v2 takes ``currency``
    (``DEFAULT_CURRENCY``: the row does not keep one, as v1 did not)."""
    events: list[Event] = []
    if worker_status in ("-", "NEW"):
        fields = {"order_id": row.order_id, "user_id": row.user_id, "amount": row.amount}
        if created_version == 2:
            events.append(OrderCreatedV2(**fields, currency=currency, items=[i.model_dump() for i in row.items]))
        else:
            events.append(OrderCreated(**fields, items=row.items))
    if row.status == "PAID":
        events.append(OrderPaid(order_id=row.order_id, user_id=row.user_id, amount=row.amount))
    if row.status == "CANCELLED":
        events.append(OrderCancelled(order_id=row.order_id, reason="customer"))
    return events


#: ``ce_source`` of the events ``reconcile --repair`` re-publishes (they are new events: new ids).
REPAIR_SOURCE = "/order-streams/reconcile"


def repair_headers(event: Event) -> list[tuple[str, str]]:
    """A re-published event's outbox headers: the CloudEvents binding's, as every event
    the project produces carries (streams.events.ce_headers), and ``x-repair``."""
    return [*((k, v.decode()) for k, v in ce_headers(event, REPAIR_SOURCE)), ("x-repair", "reconcile")]


async def repair(db: Database, mismatches: list[Mismatch], *, created_version: int = 1,
                 currency: str = "EUR") -> int:
    """Re-publish through the outbox what missing and stuck orders need (see
    :func:`repair_events`); returns rows added."""
    wanted = {m.order_id: m for m in mismatches if m.kind in REPAIRABLE}
    if not wanted:
        return 0
    rows = {r.order_id: r for r in await load_orders(db, None) if r.order_id in wanted}
    added = 0
    now = time.time()
    async with db.transaction() as tx:
        for order_id, m in wanted.items():
            for event in repair_events(rows[order_id], m.worker_status, created_version=created_version,
                                       currency=currency):
                await outbox.add_event(tx, event, now=now, headers=repair_headers(event))
                added += 1
        if db.dialect == "postgresql":
            from orders.relay import NOTIFY_CHANNEL

            await tx.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return added


def counts(mismatches: list[Mismatch]) -> dict[str, int]:
    return {k: sum(1 for m in mismatches if m.kind == k) for k in KINDS}


REPORT_HEADERS = ("ORDER", "KIND", "ORDER SERVICE", "WORKER", "AGE (s)")


def report_rows(mismatches: list[Mismatch]) -> list[tuple[str, ...]]:
    """Rows of the report table (the command tabulates them), order ids and statuses
    escaped: they come from a database and a worker, not from us."""
    return [(printable(m.order_id), m.kind, printable(m.source_status), printable(m.worker_status),
             f"{m.age_seconds:.0f}") for m in mismatches]


def summary(mismatches: list[Mismatch], total: int) -> str:
    c = counts(mismatches)
    return f"{total} orders checked: " + ", ".join(f"{c[k]} {k}" for k in KINDS)


def report_json(mismatches: list[Mismatch], total: int, repaired_events: int | None) -> dict[str, object]:
    return {
        "checked": total,
        "counts": counts(mismatches),
        "mismatches": [{"order_id": m.order_id, "kind": m.kind, "order_service": m.source_status,
                        "worker": m.worker_status, "age_seconds": round(m.age_seconds, 3)} for m in mismatches],
        "repaired_events": repaired_events,
    }


def prometheus_text(mismatches: list[Mismatch]) -> str:
    """``reconciliation_mismatches{kind}`` in the text format (node_exporter textfile collector)."""
    lines = ["# HELP reconciliation_mismatches Orders whose worker state disagrees with the order service",
             "# TYPE reconciliation_mismatches gauge"]
    for k in KINDS:
        lines.append(f'reconciliation_mismatches{{kind="{k}"}} {sum(1 for m in mismatches if m.kind == k)}')
    lines.append(f"reconciliation_last_run_timestamp_seconds {time.time():.3f}")
    return "\n".join(lines) + "\n"
