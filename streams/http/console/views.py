"""The console's routes on the worker's web server (Faust views; aiohttp underneath).

| route | what |
|---|---|
| ``GET /console`` | overview, refreshed live from ``/console/overview/live`` (JSON: ``/console/api/overview``) |
| ``GET /console/orders/{order_id}`` | an order (routed to the worker that owns it) |
| ``GET /console/inventory/{sku}`` | a SKU's stock (routed likewise) |
| ``GET /console/dlq`` | dead letters: ``service``, ``reason``, ``since``, ``key``, ``after`` (cursor), ``limit`` |
| ``GET /console/dlq/letters/{id}`` | one letter: headers and value (``…/value``: its raw bytes) |
| ``POST /console/dlq/redrive`` | start a redrive or dry run → 303 to ``/console/dlq/redrive/{job}`` |
| ``GET/POST /console/login``, ``POST /console/logout`` | the sign-in form (:mod:`streams.http.console.auth`) |
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from aiohttp import web as aioweb
from faust.web import View

from streams.ops import dlq
from streams.http.console import auth, dlq_page, overview, redrive, state
from streams.http.console.assets import CSS, JS
from streams.http.console.auth import csrf_token, html_response, see_other, signed_in, write_refusal
from streams.http.console.html import e, page
from streams.http.console.letters import letter_view
from streams.http.lookup import read_value, table_page
from streams.events import ID_PATTERN
from tables.inventory import STOCK_TABLE
from tables.order_state import TABLE as ORDER_TABLE
from tables.order_state import public_view

if TYPE_CHECKING:
    from streams.worker import Worker

_ID = re.compile(ID_PATTERN)
NOT_HERE = "The partition that holds it is not served by this worker right now (a rebalance?); try again in a moment."
#: DLQ scans and letter reads (each holds up to one 16 MiB fetch, twice with aiokafka's
#: prefetch) that run at once; the others wait up to :data:`HEAVY_WAIT` seconds, then 503.
HEAVY_REQUESTS = 2
HEAVY_WAIT = 20.0
#: Bytes of a letter's value its page reads and shows (the download streams it whole).
LETTER_PREVIEW_BYTES = 1024 * 1024
#: Bytes a download writes at a time.
DOWNLOAD_CHUNK = 64 * 1024


class Busy(Exception):
    """No turn for a heavy request within :data:`HEAVY_WAIT` seconds."""


class HeavyRequests:
    """At most ``n`` heavy requests at once (rule: every handler that reads letter
    values from Kafka runs inside :meth:`turn`)."""

    def __init__(self, n: int = HEAVY_REQUESTS, wait: float = HEAVY_WAIT) -> None:
        self.semaphore = asyncio.Semaphore(n)
        self.wait = wait

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.wait)
        except asyncio.TimeoutError:
            raise Busy() from None
        try:
            yield
        finally:
            self.semaphore.release()


def json_response(value: Any, status: int = 200) -> aioweb.Response:
    return aioweb.Response(body=orjson.dumps(value), status=status, content_type="application/json")


def wants_json(request: Any) -> bool:
    return "application/json" in request.headers.get("Accept", "") or auth.bearer(request)


class Console:
    """What the console's views share: the worker, its token, the Kafka client settings,
    the overview's sampler, the redrive marks and jobs, and the heavy-request limiter —
    and the answers every view gives the same way (a page, a problem, busy)."""

    def __init__(self, worker: "Worker") -> None:
        settings = worker.settings
        self.worker = worker
        self.settings = settings
        self.token = settings.web_token.get_secret_value()
        self.bootstrap = settings.bootstrap
        self.kafka = dict(settings.aiokafka_kwargs())
        self.sampler = overview.Sampler()
        self.marks = dlq.RedrivenIds(self.bootstrap, self.kafka)
        self.jobs = redrive.Jobs(self.bootstrap, self.kafka, on_redriven=self.marks.add)
        self.heavy = HeavyRequests()

    def csrf_of(self, request: Any) -> str | None:
        """The CSRF token for a page's forms; None when this request may not write."""
        return csrf_token(self.token) if signed_in(request, self.token) else None

    def show(self, request: Any, title: str, body: str, status: int = 200, active: str = "") -> aioweb.Response:
        return html_response(page(title, body, signed_in=signed_in(request, self.token),
                                  csrf=self.csrf_of(request) or "", read_only=not self.token, active=active), status)

    def problem(self, request: Any, title: str, message: str, status: int) -> aioweb.Response:
        return self.show(request, title, f'<p class="notice bad">{e(message)}</p>', status)

    def busy(self, request: Any, title: str) -> aioweb.Response:
        response = self.problem(request, title, "The console is busy reading dead letters for others; "
                                "try again in a moment.", 503)
        response.headers["Retry-After"] = "5"
        return response


def register_console(app: Any, worker: "Worker") -> None:
    """Adds the console's middleware and routes to the worker's Faust app (after the
    worker's own routes and auth middleware)."""
    console = Console(worker)
    add_console_middleware(app, console.token)
    metrics = getattr(worker, "metrics", None)
    auth.register_auth(app, console.token, canonical_url=console.settings.canonical_url,
                       metrics_registry=getattr(metrics, "registry", None))
    register_assets(app)
    register_overview(app, console)
    register_lookups(app, console)
    register_dead_letters(app, console)
    register_redrive(app, console)


def add_console_middleware(app: Any, token: str) -> None:
    """The console's own middleware, outermost (:func:`auth.console_middleware`)."""
    middleware = auth.console_middleware(token)
    previous_init = app.on_webserver_init

    def on_webserver_init(web: Any) -> None:
        previous_init(web)
        if middleware not in web.web_app.middlewares:
            web.web_app.middlewares.insert(0, middleware)

    app.on_webserver_init = on_webserver_init


def register_assets(app: Any) -> None:
    @app.page("/console/login/assets/{name}", name="console_asset")
    async def console_asset(web: Any, request: Any, name: str) -> Any:
        if name == "console.css":
            return aioweb.Response(text=CSS, content_type="text/css", headers={"Cache-Control": "max-age=300"})
        if name == "console.js":
            return aioweb.Response(text=JS, content_type="text/javascript", headers={"Cache-Control": "max-age=300"})
        return aioweb.Response(status=404, text="not found")


def register_overview(app: Any, console: Console) -> None:
    worker, sampler, show = console.worker, console.sampler, console.show

    @app.page("/console", name="console_overview")
    async def console_overview(web: Any, request: Any) -> Any:
        live = overview.render_overview(overview.snapshot(worker, sampler))
        body = f'<div id="overview" data-live="/console/overview/live" data-every="2000">{live}</div>'
        return show(request, "Overview", body, active="/console")

    @app.page("/console/", name="console_overview_slash")
    async def console_overview_slash(web: Any, request: Any) -> Any:
        return see_other("/console")

    @app.page("/console/overview/live", name="console_overview_live")
    async def console_overview_live(web: Any, request: Any) -> Any:
        return html_response(overview.render_overview(overview.snapshot(worker, sampler)))

    @app.page("/console/api/overview", name="console_overview_json")
    async def console_overview_json(web: Any, request: Any) -> Any:
        return json_response(overview.snapshot(worker, sampler))


# -- orders and stock (routed to the owner) ------------------------------------------------


def find_view(console: Console, param: str, prefix: str, what: str) -> Any:
    """``GET ?<param>=<id>`` → 303 to ``<prefix>/<id>`` (400 for an invalid id)."""
    async def view(web: Any, request: Any) -> Any:
        value = request.query.get(param, "").strip()
        if not _ID.match(value):
            return console.problem(request, f"Find {what}", f"invalid {what}: letters, digits and . _ : - "
                                   "(at most 128, starting with a letter or digit)", 400)
        return see_other(f"{prefix}/{quote(value, safe='')}")

    view.__name__ = f"console_find_{param}"
    return view


async def order_page(console: Console, request: Any, order_id: str) -> Any:
    show, problem = console.show, console.problem
    if not _ID.match(order_id):
        return problem(request, "Order", "invalid order id", 400)
    if ORDER_TABLE not in console.worker.tables:
        return problem(request, "Order", "This worker does not run order-state (SERVICES).", 404)
    status, value = read_value(console.worker, ORDER_TABLE, order_id.encode())
    if status == 404:
        return show(request, f"Order {order_id}", f'<p class="notice warn">No order {e(order_id)} in order-state '
                    f'(yet).</p><p><a href="{e("/console/dlq?key=" + quote(order_id, safe=""))}">'
                    'Look for its dead letters →</a></p>', 404)
    if status != 200:
        return problem(request, f"Order {order_id}", NOT_HERE, 503)
    return show(request, f"Order {order_id}", state.render_order(public_view(value)))


async def stock_page(console: Console, request: Any, sku: str) -> Any:
    show, problem = console.show, console.problem
    if not _ID.match(sku):
        return problem(request, "Stock", "invalid SKU", 400)
    if STOCK_TABLE not in console.worker.tables:
        return problem(request, "Stock", "This worker does not run inventory (SERVICES).", 404)
    status, value = read_value(console.worker, STOCK_TABLE, sku.encode())
    if status == 404:
        return show(request, f"Stock of {sku}", f'<p class="notice warn">No stock recorded for SKU {e(sku)}.</p>', 404)
    if status != 200:
        return problem(request, f"Stock of {sku}", NOT_HERE, 503)
    return show(request, f"Stock of {sku}", state.render_stock(sku, value))


def register_lookups(app: Any, console: Console) -> None:
    worker = console.worker
    app.page("/console/orders", name="console_find_order")(find_view(console, "id", "/console/orders", "order id"))
    app.page("/console/inventory", name="console_find_sku")(find_view(console, "sku", "/console/inventory", "SKU"))

    @table_page(app, worker, "/console/orders/{order_id}", ORDER_TABLE, "order_id", name="console_order")
    async def console_order(web: Any, request: Any, order_id: str) -> Any:
        return await order_page(console, request, order_id)

    @table_page(app, worker, "/console/inventory/{sku}", STOCK_TABLE, "sku", name="console_stock")
    async def console_stock(web: Any, request: Any, sku: str) -> Any:
        return await stock_page(console, request, sku)


# -- dead letters ------------------------------------------------------------------------


async def one_letter(console: Console, request: Any, letter_id: str, preview_bytes: int | None) -> Any:
    """(letter, None) or (None, the answer); call it inside ``console.heavy.turn()``."""
    problem = console.problem
    try:
        spec, _, _ = dlq.parse_id(letter_id)
    except ValueError:
        return None, problem(request, "Dead letter", "invalid dead letter id: <service>.dlq:<partition>:<offset>", 400)
    try:
        letter = (await dlq.get_dead_letters(console.bootstrap, [letter_id], client_kwargs=console.kafka,
                                             preview_bytes=preview_bytes))[letter_id]
    except dlq.DlqError as exc:
        return None, problem(request, "Dead letter", str(exc), 502)
    if letter is None:
        return None, problem(request, "Dead letter", f"no dead letter {letter_id} (removed by retention?)", 404)
    return letter, None


async def download(request: Any, letter: Any) -> aioweb.StreamResponse:
    """The value's raw bytes as an attachment, written in chunks of :data:`DOWNLOAD_CHUNK`."""
    name = letter.id.replace(":", "_").replace(".", "_") + ".bin"
    value = memoryview(letter.value or b"")
    del letter
    response = aioweb.StreamResponse(headers={
        **auth.SECURITY_HEADERS, "Content-Type": "application/octet-stream", "Content-Length": str(len(value)),
        "Content-Disposition": f'attachment; filename="{name}"'})
    await response.prepare(request)
    for at in range(0, len(value), DOWNLOAD_CHUNK):
        await response.write(value[at:at + DOWNLOAD_CHUNK])
    await response.write_eof()
    return response


def register_dead_letters(app: Any, console: Console) -> None:
    show, problem, busy, heavy, marks = console.show, console.problem, console.busy, console.heavy, console.marks

    @app.page("/console/dlq", name="console_dlq")
    async def console_dlq(web: Any, request: Any) -> Any:
        q = request.query
        try:
            f = dlq_page.parse_filter(q)
            after = dlq_page.parse_cursor(q.get("after", ""), f)
            limit = dlq_page.parse_limit(q.get("limit", ""))
        except dlq_page.BadQuery as exc:
            return show(request, "Dead letters", dlq_page.filter_form(dlq_page.Filter())
                        + f'<p class="notice bad">{e(exc)}</p>', 400, active="/console/dlq")
        try:
            async with heavy.turn():
                found, total, ledger = await dlq_page.load(console.bootstrap, f, after=after, limit=limit,
                                                           ledger=marks, client_kwargs=console.kafka)
        except Busy:
            return busy(request, "Dead letters")
        except dlq.DlqError as exc:
            return problem(request, "Dead letters", str(exc), 502)
        body = dlq_page.render(f, found, total, ledger, after=after, limit=limit, csrf=console.csrf_of(request))
        return show(request, "Dead letters", body, active="/console/dlq")

    @app.page("/console/dlq/letters/{letter_id}", name="console_letter")
    async def console_letter(web: Any, request: Any, letter_id: str) -> Any:
        try:
            async with heavy.turn():
                letter, failed = await one_letter(console, request, letter_id, LETTER_PREVIEW_BYTES)
        except Busy:
            return busy(request, "Dead letter")
        if failed is not None:
            return failed
        try:
            redriven = letter.id in await marks.redriven([letter.service])
        except dlq.DlqError as exc:
            return problem(request, "Dead letter", str(exc), 502)
        body = letter_view(letter, redriven=redriven, csrf=console.csrf_of(request))
        return show(request, f"Dead letter {letter.id}", body, active="/console/dlq")

    @app.page("/console/dlq/letters/{letter_id}/value", name="console_letter_value")
    async def console_letter_value(web: Any, request: Any, letter_id: str) -> Any:
        """The value's raw bytes, streamed in chunks (one record of at most 16 MiB in
        memory, inside a heavy turn)."""
        try:
            async with heavy.turn():
                letter, failed = await one_letter(console, request, letter_id, None)
                if failed is not None:
                    return failed
                return await download(request, letter)
        except Busy:
            return busy(request, "Dead letter")


# -- redrive -----------------------------------------------------------------------------


def redrive_view(console: Console) -> type:
    """``POST /console/dlq/redrive``: a write (:func:`auth.write_refusal`), then a job."""
    token, canonical_url, jobs, problem = console.token, console.settings.canonical_url, console.jobs, console.problem

    class ConsoleRedrive(View):
        async def post(self, request: Any) -> Any:
            form = await request.post()
            refusal = write_refusal(request, token, form, canonical_url)
            if refusal is not None:
                status, why = refusal
                if wants_json(request):
                    return json_response({"error": why}, status)
                return problem(request, "Redrive refused", why, status)
            try:
                selection = redrive.parse_selection(form)
            except dlq_page.BadQuery as exc:
                if wants_json(request):
                    return json_response({"error": str(exc)}, 400)
                return problem(request, "Redrive", str(exc), 400)
            job = jobs.start(selection, dry_run=form.get("dry_run", "1") != "0")
            if wants_json(request):
                return json_response({**job.to_dict(), "url": f"/console/api/redrive/{job.id}"}, 202)
            return see_other(f"/console/dlq/redrive/{job.id}")

    return ConsoleRedrive


def register_redrive(app: Any, console: Console) -> None:
    jobs, show, problem = console.jobs, console.show, console.problem
    app.page("/console/dlq/redrive", name="console_redrive")(redrive_view(console))

    @app.page("/console/dlq/redrive/{job_id}", name="console_job")
    async def console_job(web: Any, request: Any, job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            return problem(request, "Redrive", "no such redrive on this worker (jobs live in the worker that ran "
                           "them, the last 50 of them)", 404)
        live = redrive.render_job(job, console.csrf_of(request))
        title = "Redrive: dry run" if job.dry_run else "Redrive"
        body = f'<div id="job" data-live="/console/dlq/redrive/{e(job.id)}/live" data-every="700">{live}</div>'
        return show(request, title, body, active="/console/dlq")

    @app.page("/console/dlq/redrive/{job_id}/live", name="console_job_live")
    async def console_job_live(web: Any, request: Any, job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            return html_response('<p class="notice bad" data-final>no such redrive</p>', 404)
        return html_response(redrive.render_job(job, console.csrf_of(request)))

    @app.page("/console/api/redrive/{job_id}", name="console_job_json")
    async def console_job_json(web: Any, request: Any, job_id: str) -> Any:
        job = jobs.get(job_id)
        return json_response(job.to_dict()) if job else json_response({"error": "no such redrive"}, 404)
