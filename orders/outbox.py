"""The outbox table: rows written in the business transaction, claimed by the relay.

A row is one event to publish: ``id`` (the event's ``event_id``, also sent as the
``event_id`` header), ``aggregate_id`` (the order), topic, key, payload, headers,
``status`` (``pending`` → ``sent``, or ``failed`` when the relay gave up on it),
``attempts``, ``next_retry_at``, created/sent times and ``last_error``. ``position`` orders rows globally.

Per-order order: the relay only claims the *first* pending row of each order (no
earlier pending row of the same ``aggregate_id``), so an order's second event is
never published before its first is acknowledged — also with several relays.

A row that can never be published — larger than the relay may send, an invalid
topic, bytes that cannot be encoded — gets ``status = 'failed'`` and its
``last_error``: it stops blocking its order's later rows and is counted in
:func:`stats` (``failed_terminal``) and the ``outbox_failed_rows`` gauge. Nothing
deletes it; re-queue it by hand once the cause is fixed
(``UPDATE outbox SET status = 'pending', next_retry_at = 0 WHERE id = …``).

Time (the project's rule is ``streams/engine/streamtime.py``: no decision compares a
wall clock with a time stored before a restart, or written by another host's clock).
The one decision here is whether a row is due, enforced by :func:`add_event` and
:func:`claim`:

- A new row is due at once: its ``next_retry_at`` is 0, not the writer's clock. (It
  was the API's ``now``: a relay whose clock was behind the writer's — restarted with
  its clock stepped back, or on another host — published nothing written after its
  own ``now`` until its clock caught up, 10 minutes for a 10-minute step.)
- A failed row's ``next_retry_at`` is the relay's ``now`` + its backoff, at most
  ``max_delay`` (``RELAY_BACKOFF_MAX``) ahead. A claim therefore counts as due every row
  whose ``next_retry_at`` is at or before its ``now`` **or more than** ``max_delay``
  **after it**: no backoff of this clock put it there, a clock that has since stepped
  back did (a restart with a corrected clock, another relay's host), and the row is
  retried now instead of waiting for the step (400 days for a 400-day step).
  A forward step makes retries due early — harmless, a retry may run any time.
- ``created_at`` and ``sent_at`` are the writer's clock, for people and for the sent
  rows' retention (``OUTBOX_RETENTION``: a forward step deletes sent rows early, which
  publishes nothing twice and loses nothing pending).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from orders.db import Tx
from streams.events import Event

#: Bytes kept free beside the record's own estimate (key, headers, record overhead,
#: as aiokafka computes it): room for headers added later and the batch header.
ENVELOPE_MARGIN = 512


class EventTooLarge(ValueError):
    """The event's record would exceed what the relay may publish."""

    def __init__(self, event: Event, size: int, limit: int) -> None:
        super().__init__(
            f"the {event.type_name()} event would be a {size}-byte record; the relay publishes "
            f"at most {limit} bytes (RELAY_MAX_REQUEST_BYTES)"
        )
        self.size = size
        self.limit = limit


def record_size(event: Event, headers: Sequence[tuple[str, str]] = (), *, payload: bytes | None = None) -> int:
    """Upper bound of the event's record size as the relay's producer computes it
    (``max_request_size`` check), with its ``event_id`` header, plus ENVELOPE_MARGIN.
    ``payload``: ``event.to_bytes()`` when the caller has it already (it is not checked)."""
    all_headers = [("event_id", str(event.event_id).encode()), *((k, v.encode()) for k, v in headers)]
    estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        event.idempotency_key().encode(), event.to_bytes() if payload is None else payload, all_headers)
    return int(estimate) + ENVELOPE_MARGIN


def check_size(event: Event, limit: int, headers: Sequence[tuple[str, str]] = (), *,
               payload: bytes | None = None) -> None:
    """Raise :class:`EventTooLarge` when ``event`` could not be published under ``limit``."""
    size = record_size(event, headers, payload=payload)
    if size > limit:
        raise EventTooLarge(event, size, limit)


class OutboxRow(NamedTuple):
    """One claimed row (a named tuple: a claim makes hundreds at a time, and a frozen
    dataclass's ``__init__`` cost more than reading the row)."""

    id: str
    aggregate_id: str
    topic: str
    key: bytes
    payload: bytes
    headers: tuple[tuple[str, bytes], ...]
    attempts: int
    created_at: float
    #: Set when the stored row cannot be turned into a record (say a NULL payload or
    #: headers that are not JSON): the relay gives up on it without sending.
    error: str | None = None
    #: What the row weighs in a relay batch (:func:`row_bytes`), set by the claim.
    size: int = 0
    #: The row's place in the table's global order (``position``, its primary key).
    position: int = 0


async def add_event(tx: Tx, event: Event, *, now: float, headers: Sequence[tuple[str, str]] = (),
                    payload: bytes | None = None) -> str:
    """Insert ``event`` as a pending row (inside the caller's business transaction).
    ``payload``: ``event.to_bytes()`` when the caller has it already (serialised once per request)."""
    event_id = str(event.event_id)
    key = event.idempotency_key()
    await tx.execute(
        "INSERT INTO outbox (id, aggregate_id, topic, key, payload, headers, status, attempts,"
        " next_retry_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?)",
        (event_id, key, event.topic(), key.encode(), event.to_bytes() if payload is None else payload,
         json.dumps([list(h) for h in headers]), now),
    )
    return event_id


CLAIM = """
SELECT o.id, o.aggregate_id, o.topic, o.key, o.payload, o.headers, o.attempts, o.created_at, o.position
FROM outbox o
WHERE o.status = 'pending' AND (o.next_retry_at <= ? OR o.next_retry_at > ?)
  AND NOT EXISTS (
      SELECT 1 FROM outbox p
      WHERE p.aggregate_id = o.aggregate_id AND p.status = 'pending' AND p.position < o.position)
ORDER BY o.position
LIMIT ?
"""

#: :data:`CLAIM` reading only past a position (the relay's later claims of one round)
CLAIM_AFTER = CLAIM.replace("WHERE o.status = 'pending' AND", "WHERE o.status = 'pending' AND o.position > ? AND")


async def claim(tx: Tx, *, now: float, limit: int, skip_locked: bool, max_delay: float) -> list[OutboxRow]:
    """Due head rows, oldest first: due at ``now`` or more than ``max_delay`` (the longest
    backoff) after it — see "Time" above. On PostgreSQL the rows stay locked until the
    transaction ends and other relays skip them (``FOR UPDATE SKIP LOCKED``)."""
    sql = CLAIM + (" FOR UPDATE OF o SKIP LOCKED" if skip_locked else "")
    rows = await tx.fetchall(sql, (now, now + max_delay, limit))
    return [_row(r) for r in rows]


#: Bytes a row weighs beside its key, value and stored headers: the ``event_id`` header
#: the relay adds (a 36-byte id and its name).
ROW_OVERHEAD = 44


def row_bytes(row: OutboxRow) -> int:
    """What a row weighs in a batch: its key, value and stored headers (their JSON text,
    a little more than their bytes), with the ``event_id`` header the relay adds."""
    return row.size


async def claim_batch(tx: Tx, *, now: float, limit: int, skip_locked: bool, max_delay: float,
                      max_bytes: int | None = None, after: int | None = None) -> tuple[list[OutboxRow], bool]:
    """:func:`claim`, as one batch of the relay: at most ``limit`` rows and, past the
    first, at most ``max_bytes`` (:func:`row_bytes`); with ``after``, only rows whose
    ``position`` is greater. Returns the rows and whether more due rows may follow (the
    batch was cut by ``limit`` or ``max_bytes``).

    ``after`` leaves rows out of the batch only: an earlier row still ``pending`` (say in
    flight in another batch) still holds back every later row of its order, as above — a
    row in flight is never overtaken by the next row of its order, whichever batch would
    carry it. On PostgreSQL the rows read past a byte cut stay locked, unsent, until the
    batch's transaction ends; then they are due as before."""
    if after is None:
        sql, params = CLAIM, (now, now + max_delay, limit)
    else:
        sql, params = CLAIM_AFTER, (after, now, now + max_delay, limit)
    if skip_locked:
        sql += " FOR UPDATE OF o SKIP LOCKED"
    fetched = await tx.fetchall_long(sql, params)
    rows: list[OutboxRow] = []
    size = 0
    for r in fetched:
        row = _row(r)
        size += row.size
        if rows and max_bytes is not None and size > max_bytes:
            return rows, True
        rows.append(row)
    return rows, len(rows) == limit


def _row(r: tuple[Any, ...]) -> OutboxRow:
    try:
        key, payload, stored = r[3], r[4], r[5]
        return OutboxRow(
            id=r[0], aggregate_id=r[1], topic=r[2],
            key=key if type(key) is bytes else bytes(key), payload=payload if type(payload) is bytes else bytes(payload),
            headers=() if stored == "[]" else tuple((k, v.encode()) for k, v in json.loads(stored)),
            attempts=int(r[6]), created_at=float(r[7]), size=len(key) + len(payload) + len(stored) + ROW_OVERHEAD,
            position=r[8],
        )
    except Exception as exc:  # one bad row must not stop the others
        return OutboxRow(id=r[0], aggregate_id=r[1], topic=r[2], key=b"", payload=b"", headers=(),
                         attempts=int(r[6] or 0), created_at=float(r[7] or 0), position=r[8],
                         error=f"unreadable row: {type(exc).__name__}: {exc}")


async def mark_sent(tx: Tx, ids: Sequence[str], *, now: float) -> None:
    for i in range(0, len(ids), 500):
        chunk = list(ids[i:i + 500])
        marks = ",".join("?" * len(chunk))
        await tx.execute(
            f"UPDATE outbox SET status = 'sent', sent_at = ?, last_error = NULL WHERE id IN ({marks})",
            (now, *chunk),
        )


async def mark_sent_rows(tx: Tx, rows: Sequence[OutboxRow], *, now: float) -> None:
    """:func:`mark_sent` by primary key (``position``), as the relay marks a batch: one
    statement per 500 rows, without a lookup of each id."""
    for i in range(0, len(rows), 500):
        chunk = [r.position for r in rows[i:i + 500]]
        marks = ",".join("?" * len(chunk))
        await tx.execute_long(
            f"UPDATE outbox SET status = 'sent', sent_at = ?, last_error = NULL WHERE position IN ({marks})",
            (now, *chunk),
        )


def backoff(attempts: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: ``min(cap, base · 2^(attempts-1))`` × [0.5, 1)."""
    r = (rng or random).random()
    return min(cap, base * 2 ** max(attempts - 1, 0)) * (0.5 + r / 2)


async def mark_failed(tx: Tx, row: OutboxRow, error: str, *, now: float, delay: float) -> None:
    await tx.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_retry_at = ?, last_error = ? WHERE id = ?",
        (now + delay, error[:1000], row.id),
    )


async def mark_given_up(tx: Tx, row: OutboxRow, error: str, *, now: float) -> None:
    """Terminal: the row can never be published; it no longer holds back its order."""
    await tx.execute(
        "UPDATE outbox SET status = 'failed', attempts = attempts + 1, next_retry_at = ?, last_error = ?"
        " WHERE id = ?",
        (now, error[:1000], row.id),
    )


#: Sent rows one housekeeping transaction deletes at most. At 1,000 orders/s a minute of
#: sent rows is ~120,000; deleted in one statement they would hold the write lock — and on
#: SQLite the event loop, where a group's statements run — for the whole delete, stalling
#: every request behind it. In chunks, the requests' groups take their turns in between.
DELETE_CHUNK = 5000


async def delete_sent_before(tx: Tx, cutoff: float, *, limit: int | None = None) -> int:
    """Delete sent rows sent before ``cutoff`` (at most ``limit`` of them); return how many."""
    if limit is None:
        return await tx.execute("DELETE FROM outbox WHERE status = 'sent' AND sent_at < ?", (cutoff,))
    return await tx.execute(
        "DELETE FROM outbox WHERE position IN"
        " (SELECT position FROM outbox WHERE status = 'sent' AND sent_at < ? LIMIT ?)", (cutoff, limit))


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    sent: int
    #: pending rows whose last attempt failed (they are retried with backoff)
    failed: int
    oldest_pending_age_seconds: float
    #: rows the relay gave up on (``status = 'failed'``)
    failed_terminal: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {"pending": self.pending, "sent": self.sent, "failed": self.failed,
                "failed_terminal": self.failed_terminal,
                "oldest_pending_age_seconds": round(self.oldest_pending_age_seconds, 3)}


async def stats(tx: Tx, *, now: float, count_sent: bool = True) -> OutboxStats:
    """The outbox counts. Pending and given-up rows are read through the ``status`` indexes,
    so their cost is those rows, never the sent ones kept for ``OUTBOX_RETENTION`` (millions
    at a sustained rate; on SQLite these statements run on the event loop). Only the ``sent``
    count reads the sent rows (an index-only count); ``count_sent=False`` (the relay's gauge
    timer) leaves it at 0."""
    row = await tx.fetchone(
        "SELECT count(*), COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0), MIN(created_at)"
        " FROM outbox WHERE status = 'pending'"
    )
    failed = await tx.fetchone("SELECT count(*) FROM outbox WHERE status = 'failed'")
    sent = await tx.fetchone("SELECT count(*) FROM outbox WHERE status = 'sent'") if count_sent else (0,)
    assert row is not None and failed is not None and sent is not None
    oldest = float(row[2]) if row[2] is not None else None
    return OutboxStats(int(row[0]), int(sent[0]), int(row[1]),
                       max(0.0, now - oldest) if oldest is not None else 0.0, int(failed[0]))
