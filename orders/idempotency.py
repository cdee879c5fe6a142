"""``Idempotency-Key`` for the order service's writes.

Follows the IETF draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header) and Stripe's practice. The rules, enforced
by :class:`orders.api.OrdersApi` with the helpers here:

- The header is optional on ``POST /orders``, ``POST /orders/{id}/pay`` and
  ``POST /orders/{id}/cancel``; without it a write behaves as before. The key is 1 to
  :data:`MAX_KEY_LENGTH` printable ASCII characters, sent bare (Stripe; no ``"`` or ``\\``) or as a
  structured-field string in double quotes (the draft); anything else, or the header
  sent twice, is 400 before anything is read or written.
- The key is stored **in the same database transaction as the write's effect**
  (the order row and its outbox row), with the request's fingerprint and the answer.
  A crash before the commit leaves neither; after it, both. So a retry either finds
  the stored answer or does the write for the first time — never twice.
- A repeat with the same key and the same request (method, path and, for
  ``POST /orders``, the validated body) is answered with the stored status and body
  and the header ``Idempotent-Replayed: true``; nothing is written again.
- The same key with another request is 422 (the draft's "key reused with a different
  payload").
- The same key while a request under it is still being processed is 409 (``Retry-After``):
  in this process by a set of keys in flight; across processes on PostgreSQL by the key's
  primary key (the later transaction fails on it and is rolled back, effect and all).
  On SQLite writes from all processes are serialised, so a concurrent repeat waits and
  is then a replay.
- Only answers of writes that ran (201/202) are stored. An answer that changed nothing
  because the request was refused (400, 404, 409, 413, 415, 422) is not: a retry is
  judged afresh, as Stripe does for requests that failed validation.
- Keys are kept ``IDEMPOTENCY_TTL`` seconds (default 24 h), by the API's wall clock: an
  older key is ignored (the request is a new one) and deleted by a sweep that runs in a
  write's transaction at most every :data:`SWEEP_INTERVAL` seconds.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from orders.db import Tx

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
#: Stripe's bound; a longer key is 400 (the table's primary key stays small).
MAX_KEY_LENGTH = 255
#: Seconds between sweeps of expired keys (each done inside one write's transaction).
SWEEP_INTERVAL = 60.0

_BARE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # printable ASCII but " and \
_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')


class BadKey(ValueError):
    """The header is not a usable key; ``str()`` says why (without echoing it)."""


def parse_key(values: list[str]) -> str | None:
    """The key of a request's ``Idempotency-Key`` header values (None: no header)."""
    if not values:
        return None
    if len(values) > 1:
        raise BadKey(f"send {HEADER} once")
    value = values[0].strip(" \t")
    if (m := _QUOTED.fullmatch(value)) is not None:
        key = re.sub(r'\\(["\\])', r"\1", m.group(1))
    elif _BARE.fullmatch(value):
        key = value
    else:
        raise BadKey(f"{HEADER} must be printable ASCII, bare or as a quoted string")
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise BadKey(f"{HEADER} must be 1-{MAX_KEY_LENGTH} characters")
    return key


def fingerprint(method: str, path: str, body: str = "") -> str:
    """What makes two requests "the same" for a key: method, path and canonical body."""
    return hashlib.sha256(f"{method}\n{path}\n{body}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    fingerprint: str
    status: int
    body: str
    created_at: float

    def live(self, *, now: float, ttl: float) -> bool:
        return self.created_at >= now - ttl


async def lookup(tx: Tx, key: str) -> Stored | None:
    """The stored answer for ``key``, live or expired (see :meth:`Stored.live`)."""
    row = await tx.fetchone(
        "SELECT fingerprint, status, body, created_at FROM idempotency_keys WHERE idem_key = ?", (key,))
    return Stored(row[0], int(row[1]), row[2], float(row[3])) if row else None


async def remember(tx: Tx, key: str, fp: str, status: int, body: str, *, now: float,
                   replace: bool = False) -> None:
    """Store the answer in the caller's transaction (the one holding the effect).
    ``replace``: an expired row of the key was found and is replaced. Otherwise a row
    of the key makes the INSERT fail (a concurrent request under that key committed
    first). One statement on the common path: each is a round trip under the write lock."""
    if replace:
        await tx.execute("DELETE FROM idempotency_keys WHERE idem_key = ?", (key,))
    await tx.execute(
        "INSERT INTO idempotency_keys (idem_key, fingerprint, status, body, created_at) VALUES (?, ?, ?, ?, ?)",
        (key, fp, status, body, now),
    )


async def sweep(tx: Tx, *, now: float, ttl: float) -> int:
    """Delete keys older than ``ttl``; returns how many."""
    return await tx.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - ttl,))
