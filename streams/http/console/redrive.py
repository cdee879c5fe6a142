"""Redrive from the console: a job per request, run in the worker, watched from a page.

``POST /console/dlq/redrive`` (token and CSRF checked first, :mod:`streams.http.console.auth`)
takes a *selection* (``id`` fields: dead letter ids) or a *filter* (``service``,
``reason``, ``since``, ``key``) and ``dry_run``. It starts a :class:`Job` and answers
303 to the job's page, which shows its progress live; a dry run ends with the
preview and a confirmation form that posts the same request without ``dry_run``.

The job calls :func:`streams.ops.dlq.redrive_letters` — the CLI's protocol, ledger
included: a letter already in ``<service>.dlq.redriven`` is marked "already
redriven" and never sent again. Jobs of one worker run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from streams.ops import dlq
from streams.http.console.dlq_page import BadQuery, Filter, parse_filter
from streams.http.console.html import badge, e, hidden, number, table, text, url, when
from streams.http.console.letters import outcome_row
from streams.ops.dlq import DeadLetter

log = logging.getLogger(__name__)

MAX_IDS = 500
#: Outcomes a job keeps to show, per kind (counts are always complete).
MAX_OUTCOMES = 500
KEEP_JOBS = 50
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,32}$")


@dataclass(frozen=True)
class Selection:
    mode: str  # "selection" | "filter"
    ids: tuple[str, ...] = ()
    filter: Filter = Filter()

    def describe(self) -> str:
        if self.mode == "selection":
            return f"{len(self.ids)} selected dead letter{'s' if len(self.ids) != 1 else ''}"
        where = ", ".join(f"{k} {v}" for k, v in self.filter.query().items() if v)
        return f"every dead letter matching {where or 'no filter (all of them)'}"

    def form_fields(self) -> dict[str, Any]:
        """The fields that post this selection again (``since`` made absolute)."""
        if self.mode == "selection":
            return {"mode": "selection", "id": list(self.ids)}
        f = self.filter
        since = when(f.since_ms).replace(" ", "T").rstrip("Z") if f.since_ms is not None else ""
        return {"mode": "filter", "service": f.service, "reason": f.reason, "since": since, "key": f.key}


def parse_selection(form: Any) -> Selection:
    """From the posted form (a multidict: ``id`` repeats). BadQuery when unusable."""
    mode = form.get("mode", "")
    if mode == "selection":
        ids = tuple(dict.fromkeys(str(i) for i in form.getall("id", [])))
        if not ids:
            raise BadQuery("select at least one dead letter")
        if len(ids) > MAX_IDS:
            raise BadQuery(f"at most {MAX_IDS} dead letters at once; redrive by filter for more")
        for i in ids:
            try:
                dlq.parse_id(i)
            except ValueError:
                raise BadQuery("invalid dead letter id") from None
        return Selection("selection", ids)
    if mode == "filter":
        return Selection("filter", filter=parse_filter(form))
    raise BadQuery("mode must be selection or filter")


@dataclass
class Job:
    id: str
    selection: Selection
    dry_run: bool
    state: str = "queued"  # queued | running | done | failed
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_ms: int | None = None
    #: records to look at (the progress bar's end), None until known
    total: int | None = None
    scanned: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {
        "redriven": 0, "would_redrive": 0, "already_redriven": 0, "refused": 0, "missing": 0})
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def note(self, outcome: dict[str, Any]) -> None:
        n = self.counts[outcome["action"]] = self.counts.get(outcome["action"], 0) + 1
        if n <= MAX_OUTCOMES:
            self.outcomes.append(outcome)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "dry_run": self.dry_run, "mode": self.selection.mode,
                "selection": self.selection.describe(), "total": self.total, "scanned": self.scanned,
                "counts": dict(self.counts), "outcomes": list(self.outcomes), "error": self.error,
                "created_ms": self.created_ms, "finished_ms": self.finished_ms}


class Jobs:
    def __init__(self, bootstrap: str, client_kwargs: Mapping[str, Any],
                 on_redriven: Callable[[str, str], None] = lambda service, letter_id: None) -> None:
        self.bootstrap = bootstrap
        self.on_redriven = on_redriven
        self.kafka = dict(client_kwargs)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id) if JOB_ID.match(job_id) else None

    def start(self, selection: Selection, dry_run: bool) -> Job:
        job = Job(secrets.token_urlsafe(12), selection, dry_run)
        self.jobs[job.id] = job
        while len(self.jobs) > KEEP_JOBS:
            self.jobs.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._run(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return job

    async def _run(self, job: Job) -> None:
        async with self.lock:
            job.state = "running"
            try:
                if job.selection.mode == "selection":
                    await self._selection(job)
                else:
                    await self._filter(job)
                job.state = "done"
            except dlq.DlqError as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:  # shown on the page; the worker goes on
                log.exception("console redrive job %s failed", job.id)
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                job.finished_ms = int(time.time() * 1000)

    def _outcome(self, job: Job) -> Callable[[dlq.Outcome], None]:
        def note(outcome: dlq.Outcome) -> None:
            job.note(outcome.to_dict())
            if outcome.action == "redriven":
                self.on_redriven(outcome.letter.service, outcome.letter.id)

        return note

    async def _marked(self, job: Job, letters: AsyncIterator[DeadLetter] | Iterable[DeadLetter],
                      done_before: set[str], keep: Filter | None = None) -> AsyncIterator[DeadLetter]:
        """``letters`` (filtered by key when ``keep``), noting those the ledger has."""
        async with aclosing(dlq.each(letters)) as stream:
            async for d in stream:
                if keep is not None and keep.key and d.key != keep.key.encode():
                    continue
                if d.id in done_before:
                    job.note({"id": d.id, "service": d.service, "reason": d.reason, "action": "already_redriven",
                              "target": None})
                yield d

    async def _selection(self, job: Job) -> None:
        ids = job.selection.ids
        job.total = len(ids)
        # Previews first (up to 500 ids: 500 × 256 bytes of values, not 500 × 16 MiB);
        # a letter is read whole only when it is about to be sent (:meth:`_whole`).
        found = await dlq.get_dead_letters(self.bootstrap, ids, client_kwargs=self.kafka,
                                           preview_bytes=dlq.LIST_PREVIEW_BYTES)
        job.scanned = len(ids)
        by_service: dict[str, list[DeadLetter]] = {}
        for letter_id in ids:
            d = found.get(letter_id)
            if d is None:
                job.note({"id": letter_id, "action": "missing", "target": None,
                          "why": "no such record (removed by retention?)"})
            else:
                by_service.setdefault(d.service, []).append(d)
        for service, letters in by_service.items():
            done = await dlq.redriven_ids(self.bootstrap, service, client_kwargs=self.kafka)
            chosen = self._marked(job, letters, done)
            await dlq.redrive_letters(self.bootstrap, service, chosen if job.dry_run else self._whole(job, chosen),
                                      dry_run=job.dry_run, done_before=done, on_outcome=self._outcome(job),
                                      client_kwargs=self.kafka)

    async def _whole(self, job: Job, letters: AsyncIterator[DeadLetter]) -> AsyncIterator[DeadLetter]:
        """Each preview of ``letters`` read again whole, one at a time."""
        async with aclosing(letters) as stream:
            async for d in stream:
                whole = (await dlq.get_dead_letters(self.bootstrap, [d.id], client_kwargs=self.kafka))[d.id]
                if whole is None:
                    job.note({"id": d.id, "action": "missing", "target": None,
                              "why": "no such record (removed by retention?)"})
                    continue
                yield whole

    async def _filter(self, job: Job) -> None:
        f = job.selection.filter
        job.total = await dlq.record_count(self.bootstrap, f.services, client_kwargs=self.kafka)

        def scanned(n: int) -> None:
            job.scanned += n

        for service in f.services:
            done = await dlq.redriven_ids(self.bootstrap, service, client_kwargs=self.kafka)
            letters = dlq.iter_dead_letters(self.bootstrap, service, reason=f.reason or None, since_ms=f.since_ms,
                                            on_scanned=scanned, client_kwargs=self.kafka)
            async with aclosing(letters):
                await dlq.redrive_letters(self.bootstrap, service, self._marked(job, letters, done, keep=f),
                                          dry_run=job.dry_run, done_before=done, on_outcome=self._outcome(job),
                                          client_kwargs=self.kafka)


def confirm_form(job: Job, csrf: str) -> str:
    fields = "".join(hidden(k, i) for k, v in job.selection.form_fields().items()
                     for i in (v if isinstance(v, list) else [v]) if i not in ("", None))
    n = job.counts["would_redrive"]
    more = " (and any matching letter that arrived since)" if job.selection.mode == "filter" else ""
    return (
        '<form method="post" action="/console/dlq/redrive" class="card confirm">'
        f'<p>Send {n:,} dead letter{"s" if n != 1 else ""}{e(more)} back to '
        f'{"their source topics" if n != 1 else "its source topic"}? Each is recorded in '
        'its service\'s ledger and never redriven twice.</p>'
        f'{hidden("csrf", csrf)}{hidden("dry_run", "0")}{fields}'
        f'<button type="submit" class="danger confirm-redrive">Confirm: redrive {n:,} dead letter{"s" if n != 1 else ""}</button> '
        '<a href="/console/dlq">cancel</a></form>'
    )


def render_job(job: Job, csrf: str | None) -> str:
    """The live part of a job's page; carries ``data-final`` once the job is over."""
    kind = {"done": "ok", "failed": "bad"}.get(job.state, "warn")
    what = "Dry run" if job.dry_run else "Redrive"
    bar = (f'<progress value="{job.scanned}" max="{job.total}"></progress> '
           f'{number(job.scanned)} of {number(job.total)} records looked at' if job.total
           else f"{number(job.scanned)} records looked at")
    c = job.counts
    counts = (f'<p class="counts">'
              f'{"would redrive" if job.dry_run else "redriven"}: <b class="count-main">'
              f'{number(c["would_redrive"] if job.dry_run else c["redriven"])}</b> · '
              f'already redriven: <b class="count-already">{number(c["already_redriven"])}</b> · '
              f'refused: <b>{number(c["refused"])}</b>'
              f'{" · missing: <b>" + number(c["missing"]) + "</b>" if c.get("missing") else ""}</p>')
    error = f'<p class="notice bad">{text(job.error)}</p>' if job.error else ""
    rows = [outcome_row(o) for o in job.outcomes]
    listing = table(["dead letter", "outcome", "to", "why"], rows, empty="no dead letters (yet)", cls="outcomes")
    if any(n > MAX_OUTCOMES for n in c.values()):
        listing += f'<p class="muted">the first {MAX_OUTCOMES:,} of each kind are listed; the counts are complete</p>'
    tail = ""
    if job.finished:
        tail = '<span data-final></span>'
        if job.state == "done" and job.dry_run and c["would_redrive"] and csrf:
            tail += confirm_form(job, csrf)
        elif job.state == "done" and not job.dry_run:
            back = url("/console/dlq", **(job.selection.filter.query() if job.selection.mode == "filter" else {}))
            tail += f'<p class="notice done">Finished. <a href="{e(back)}">Back to the dead letters</a></p>'
        elif job.state == "done":
            tail += '<p class="notice">Nothing to redrive. <a href="/console/dlq">Back to the dead letters</a></p>'
    return (f'<div class="card job" data-state="{e(job.state)}"><p>{e(what)} of {e(job.selection.describe())}: '
            f'{badge(job.state, kind)}</p><p>{bar}</p>{counts}{error}</div>{tail}{listing}')
