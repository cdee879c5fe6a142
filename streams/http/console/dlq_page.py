"""``GET /console/dlq``: every service's dead letters, filtered, a page at a time.

A page is one bounded scan (:func:`find`): it streams the DLQ topics from the
cursor (:func:`streams.ops.dlq.iter_dead_letters`, a partition and a fetch at a time)
and stops after ``limit`` matches or :data:`SCAN_BUDGET` records, whichever comes
first; the next page resumes after the last record it looked at. With 100,000
letters and a filter that matches few, each page still reads at most the budget.

Memory: a page keeps :data:`streams.ops.dlq.LIST_PREVIEW_BYTES` of each letter's value
(the list shows none of it; the letter's own page shows more), so a page of 500
letters of 15 MB holds 128 KB of values; the scan itself holds one fetch (at most
16 MiB) at a time. The worker runs at most :data:`HEAVY_REQUESTS` such scans at once
(:class:`streams.http.console.views` waits for a turn, then answers 503).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from streams import registry

from streams.ops import dlq
from streams.http.console.html import e, hidden, table, url
from streams.http.console.letters import SUMMARY_HEADERS, summary_cells
from streams.ops.dlq import DeadLetter
from streams.events import ID_PATTERN

SCAN_BUDGET = 5000
PAGE_SIZE = 50
REASONS = ("max_attempts", "non_retryable", "decode_error", "validation_error", "unknown_version",
           "illegal_transition", "out_of_order_timeout", "too_large")
_REASON = re.compile(r"^[a-z_]{1,40}$")
_ID = re.compile(ID_PATTERN)


class BadQuery(ValueError):
    """A query parameter the console refuses (400), with a message for the operator."""


@dataclass(frozen=True)
class Filter:
    service: str = ""
    reason: str = ""
    since: str = ""
    since_ms: int | None = None
    key: str = ""

    @property
    def services(self) -> tuple[str, ...]:
        return (self.service,) if self.service else registry.SERVICE_NAMES

    def matches(self, d: DeadLetter) -> bool:
        if self.key and d.key != self.key.encode():
            return False
        return dlq.matches(d, reason=self.reason or None, since_ms=self.since_ms)

    def query(self) -> dict[str, str]:
        return {"service": self.service, "reason": self.reason, "since": self.since, "key": self.key}


def parse_filter(q: Mapping[str, str]) -> Filter:
    service, reason = q.get("service", "").strip(), q.get("reason", "").strip()
    since, key = q.get("since", "").strip(), q.get("key", "").strip()
    if service and service not in registry.SERVICE_NAMES:
        raise BadQuery(f"unknown service; known: {', '.join(registry.SERVICE_NAMES)}")
    if reason and not _REASON.match(reason):
        raise BadQuery("a reason is lower-case letters and underscores, e.g. max_attempts")
    if key and not _ID.match(key):
        raise BadQuery("invalid key: letters, digits and . _ : - (at most 128)")
    since_ms = None
    if since:
        try:
            since_ms = dlq.parse_since(since)
        except ValueError:
            raise BadQuery("since: expected 15m, 2h, 1d or an ISO 8601 time") from None
    return Filter(service, reason, since, since_ms, key)


def parse_cursor(value: str, f: Filter) -> str | None:
    if not value:
        return None
    try:
        spec, _, _ = dlq.parse_id(value)
    except ValueError:
        raise BadQuery("invalid cursor") from None
    if spec.name not in f.services:
        raise BadQuery("the cursor is not a dead letter of the chosen service")
    return value


def parse_limit(value: str) -> int:
    if not value:
        return PAGE_SIZE
    if not (value.isascii() and value.isdigit() and len(value) <= 3) or not 1 <= int(value) <= 500:
        raise BadQuery("limit: a number from 1 to 500")
    return int(value)


@dataclass
class Found:
    letters: list[DeadLetter] = field(default_factory=list)
    #: resume after this id (None: nothing more)
    next_cursor: str | None = None
    scanned: int = 0
    #: the scan stopped at its budget, not at the page size
    budget_hit: bool = False


async def find(bootstrap: str, f: Filter, *, after: str | None = None, limit: int = PAGE_SIZE,
               budget: int = SCAN_BUDGET, client_kwargs: Mapping[str, Any] | None = None) -> Found:
    """One page: at most ``limit`` letters matching ``f`` after ``after``, reading at most
    ``budget`` records (and one more letter, to know whether there is a next page)."""
    out = Found()
    last: str | None = None
    letters = dlq.iter_dead_letters(bootstrap, f.services, start_after=after, client_kwargs=client_kwargs,
                                    preview_bytes=dlq.LIST_PREVIEW_BYTES)
    async with aclosing(letters) as stream:
        async for d in stream:
            if f.matches(d):
                if len(out.letters) == limit:
                    out.next_cursor = out.letters[-1].id
                    return out
                out.letters.append(d)
            out.scanned += 1
            last = d.id
            if out.scanned >= budget:
                out.budget_hit, out.next_cursor = True, last
                return out
    return out


async def load(bootstrap: str, f: Filter, *, after: str | None, limit: int, ledger: dlq.RedrivenIds,
               client_kwargs: Mapping[str, Any] | None) -> tuple[Found, int, set[str]]:
    """The page, the record count of the chosen DLQ topics and the ledgers' ids, at once."""
    found, total, redriven = await asyncio.gather(
        find(bootstrap, f, after=after, limit=limit, client_kwargs=client_kwargs),
        dlq.record_count(bootstrap, f.services, client_kwargs=client_kwargs),
        ledger.redriven(f.services),
    )
    return found, total, redriven


def options(values: tuple[str, ...] | list[str], chosen: str, anything: str) -> str:
    first = f'<option value="">{e(anything)}</option>'
    return first + "".join(f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(v)}</option>'
                           for v in values)


def filter_form(f: Filter) -> str:
    services = options(registry.SERVICE_NAMES, f.service, "every service")
    reasons = list(REASONS) + ([f.reason] if f.reason and f.reason not in REASONS else [])
    reason_opts = options(reasons, f.reason, "any reason")
    return (
        '<form class="filters card" method="get" action="/console/dlq" id="dlq-filter">'
        f'<label>Service<select name="service">{services}</select></label>'
        f'<label>Reason<select name="reason">{reason_opts}</select></label>'
        f'<label>Failed since<input name="since" value="{e(f.since)}" placeholder="15m, 2h, 1d or 2024-05-01T10:00"></label>'
        f'<label>Key (order id)<input name="key" value="{e(f.key)}" placeholder="any key"></label>'
        '<button type="submit">Filter</button>'
        '<a href="/console/dlq">clear</a></form>'
    )


def render(f: Filter, found: Found, total: int, ledger: set[str], *, after: str | None, limit: int,
           csrf: str | None) -> str:
    """The page body. ``csrf`` None: read-only (no selection, no redrive buttons)."""
    rows = []
    for d in found.letters:
        cells = summary_cells(d, d.id in ledger)
        if csrf is not None:
            box = ("" if d.id in ledger else
                   f'<input type="checkbox" name="id" value="{e(d.id)}" aria-label="select {e(d.id)}">')
            cells = [box, *cells]
        rows.append(cells)
    headers = ([""] if csrf is not None else []) + SUMMARY_HEADERS
    listing = table(headers, rows, empty="no dead letters match", cls="letters")
    where = ", ".join(f"{k} {v}" for k, v in f.query().items() if v) or "no filter"
    scanned = (f'<p class="notice warn">Looked at {found.scanned:,} records (the limit of one page) and found '
               f'{len(found.letters)} matching; the next page goes on from there.</p>') if found.budget_hit else ""
    nav = []
    if after:
        nav.append(f'<a href="{e(url("/console/dlq", **f.query()))}">« first page</a>')
    if found.next_cursor:
        nav.append(f'<a class="next-page" href="{e(url("/console/dlq", **f.query(), after=found.next_cursor, limit=limit if limit != PAGE_SIZE else None))}">next page »</a>')
    summary = (f'<p class="muted">{total:,} records in {e(", ".join(registry.service(s).dlq for s in f.services))}; '
               f'showing {len(found.letters)} matching ({e(where)}){" after " + e(after) if after else ""}.</p>')
    if csrf is None:
        return filter_form(f) + summary + scanned + listing + f'<p class="actions">{" ".join(nav)}</p>'
    filt = "".join(hidden(k, v) for k, v in f.query().items())
    actions = (
        '<div class="actions">'
        '<button type="submit" name="mode" value="selection" data-needs-selection data-label="Preview redrive of N selected" '
        'class="redrive-selected">Preview redrive of the selected</button>'
        '<button type="submit" name="mode" value="filter" class="secondary redrive-filter">'
        f'Preview redrive of everything matching ({e(where)})</button>'
        '<span class="muted">a dry run first: nothing is sent until you confirm</span></div>'
    )
    select_all = '<label class="muted"><input type="checkbox" data-select-all> select all on this page</label>'
    return (
        filter_form(f) + summary + scanned
        + '<form method="post" action="/console/dlq/redrive" data-selection class="redrive-form">'
        + hidden("csrf", csrf) + hidden("dry_run", "1") + filt + actions + select_all + listing + "</form>"
        + f'<p class="actions">{" ".join(nav)}</p>'
    )
