"""Console auth without a broker: who may redrive (token, CSRF, origin), the sign-in
form's cookie, the redirect to it, and ``POST /console/dlq/redrive`` itself."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web as aioweb
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, MultiDict, MultiDictProxy

from streams.http.console import auth, redrive
from streams.http.console.auth import csrf_token, safe_next, write_refusal
from streams.settings import WorkerSettings
from streams.http.sessions import SESSION_COOKIE, sessions_of

TOKEN = "s3cret-token-of-at-least-32-characters"
HOST = "127.0.0.1:6066"
#: A signed session of TOKEN, as the sign-in form sets it.
SESSION = sessions_of(TOKEN).issue()


def request(method: str = "POST", path: str = "/console/dlq/redrive", *, cookie: str | None = None,
            bearer: str | None = None, origin: str | None = f"http://{HOST}", fetch_site: str | None = "same-origin",
            form: dict[str, Any] | list[tuple[str, str]] | None = None) -> Any:
    headers = CIMultiDict({"Host": HOST})
    if cookie is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    if origin is not None:
        headers["Origin"] = origin
    if fetch_site is not None:
        headers["Sec-Fetch-Site"] = fetch_site
    req = make_mocked_request(method, path, headers=headers)
    items = form.items() if isinstance(form, dict) else (form or [])
    req._post = MultiDictProxy(MultiDict(list(items)))  # what request.post() returns
    return req


def good_form(**extra: str) -> dict[str, str]:
    return {"csrf": csrf_token(TOKEN), "mode": "selection", "id": "notifications.dlq:0:1", **extra}


# -- write_refusal ------------------------------------------------------------------------


def test_csrf_token_is_derived_from_the_token():
    assert csrf_token(TOKEN) == csrf_token(TOKEN) != csrf_token(TOKEN + "x")
    assert TOKEN not in csrf_token(TOKEN) and len(csrf_token(TOKEN)) == 64
    assert csrf_token("") == ""


def test_without_web_token_every_write_is_refused():
    assert write_refusal(request(cookie="anything", form=good_form()), "", good_form())[0] == 403


@pytest.mark.parametrize("kwargs", [{}, {"cookie": "wrong"}, {"bearer": "wrong"}, {"cookie": ""}])
def test_without_the_token_a_write_is_401(kwargs):
    req = request(**kwargs)
    assert write_refusal(req, TOKEN, good_form()) == (401, "sign in first: the console's token is missing or wrong")


@pytest.mark.parametrize("form", [{}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": TOKEN}])
def test_a_cookie_session_needs_the_csrf_token(form):
    status, why = write_refusal(request(cookie=SESSION), TOKEN, form)
    assert status == 403 and "CSRF" in why


@pytest.mark.parametrize("origin,fetch_site", [
    ("http://evil.example", "cross-site"), ("http://evil.example", None), ("null", None),
    (None, "cross-site"), (None, "same-site"), ("http://127.0.0.1:6067", "same-site"),
])
def test_a_cross_site_write_is_refused_even_with_the_csrf_token(origin, fetch_site):
    req = request(cookie=SESSION, origin=origin, fetch_site=fetch_site)
    status, why = write_refusal(req, TOKEN, good_form())
    assert status == 403 and "cross-site" in why


def test_a_same_origin_write_with_cookie_and_csrf_is_allowed():
    assert write_refusal(request(cookie=SESSION), TOKEN, good_form()) is None
    assert write_refusal(request(cookie=SESSION, origin=None, fetch_site=None), TOKEN, good_form()) is None


def test_the_bearer_header_is_no_ambient_credential_and_needs_no_csrf():
    assert write_refusal(request(bearer=TOKEN, origin=None, fetch_site=None), TOKEN, {}) is None


@pytest.mark.parametrize("value,expected", [
    (None, "/console"), ("", "/console"), ("/console/dlq?reason=max_attempts", "/console/dlq?reason=max_attempts"),
    ("//evil.example/console", "/console"), ("https://evil.example/console", "/console"),
    ("/console\\@evil.example", "/console"), ("/metrics", "/console"), ("javascript:alert(1)", "/console"),
])
def test_after_sign_in_only_console_paths_of_this_server(value, expected):
    assert safe_next(value) == expected


# -- the middleware -----------------------------------------------------------------------


async def run_middleware(token: str, req: Any) -> tuple[Any, list[Any]]:
    seen: list[Any] = []

    async def handler(r: Any) -> Any:
        seen.append(r)
        return aioweb.Response(text="ok")

    return await auth.console_middleware(token)(req, handler), seen


async def test_a_browser_without_the_token_is_sent_to_the_sign_in_form():
    response, seen = await run_middleware(TOKEN, request("GET", "/console/dlq?reason=max_attempts"))
    assert response.status == 303 and not seen
    assert response.headers["Location"] == "/console/login?next=%2Fconsole%2Fdlq%3Freason%3Dmax_attempts"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_signed_in_pages_pass_with_security_headers():
    response, seen = await run_middleware(TOKEN, request("GET", "/console/dlq", cookie=SESSION))
    assert response.status == 200 and seen
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("method,path", [("POST", "/console/dlq/redrive"), ("GET", "/console/api/overview"),
                                         ("GET", "/console/overview/live"), ("GET", "/console/login"),
                                         ("GET", "/orders/o-1")])
async def test_the_middleware_leaves_refusals_to_the_auth_middleware(method, path):
    response, seen = await run_middleware(TOKEN, request(method, path))
    assert seen and response.status == 200
    assert ("Content-Security-Policy" in response.headers) == path.startswith("/console")


async def test_without_web_token_nothing_redirects():
    response, seen = await run_middleware("", request("GET", "/console"))
    assert seen and response.status == 200


# -- views: the sign-in form and POST /console/dlq/redrive -------------------------------


class FakeApp:
    """What register_console needs of a Faust app: pages by path, no routing."""

    def __init__(self) -> None:
        self.pages: dict[str, Any] = {}
        self.on_webserver_init = lambda web: None

    def page(self, path: str, name: str | None = None) -> Any:
        def add(view: Any) -> Any:
            from faust.web import View

            cls = view if isinstance(view, type) else View.from_handler(view)
            self.pages[path] = cls(self, None)
            return cls

        return add

    def table_route(self, **kwargs: Any) -> Any:
        return lambda fun: fun


def console(token: str, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeApp, list[Any]]:
    from streams.http.console.views import register_console

    started: list[Any] = []
    monkeypatch.setattr(redrive.Jobs, "start",
                        lambda self, selection, dry_run: started.append((selection, dry_run)) or
                        SimpleNamespace(id="job-id-1234", to_dict=lambda: {"id": "job-id-1234"}))
    app = FakeApp()
    worker = SimpleNamespace(settings=WorkerSettings(web_token=token), tables={})
    register_console(app, worker)
    return app, started


async def test_sign_in_sets_an_httponly_samesite_strict_cookie(monkeypatch):
    app, _ = console(TOKEN, monkeypatch)
    response = await app.pages["/console/login"].post(
        request(path="/console/login", form={"token": TOKEN, "next": "/console/dlq"}))
    assert response.status == 303 and response.headers["Location"] == "/console/dlq"
    cookie = response.cookies[SESSION_COOKIE]
    assert TOKEN not in cookie.value and sessions_of(TOKEN).valid(cookie.value)
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console"


async def test_a_wrong_token_sets_no_cookie(monkeypatch):
    monkeypatch.setattr(auth, "WRONG_TOKEN_DELAY", 0)
    app, _ = console(TOKEN, monkeypatch)
    response = await app.pages["/console/login"].post(request(path="/console/login", form={"token": "guess"}))
    assert response.status == 401 and SESSION_COOKIE not in response.cookies
    cross = await app.pages["/console/login"].post(
        request(path="/console/login", origin="http://evil.example", form={"token": TOKEN}))
    assert cross.status == 403 and SESSION_COOKIE not in cross.cookies


async def test_redrive_post_is_refused_without_web_token(monkeypatch):
    app, started = console("", monkeypatch)
    response = await app.pages["/console/dlq/redrive"].post(request(cookie="x", form=good_form()))
    assert response.status == 403 and not started


@pytest.mark.parametrize("kwargs,form,status", [
    ({}, good_form(), 401),
    ({"cookie": SESSION}, good_form(csrf="forged"), 403),
    ({"cookie": SESSION, "origin": "http://evil.example", "fetch_site": "cross-site"}, good_form(), 403),
])
async def test_redrive_post_refusals(monkeypatch, kwargs, form, status):
    app, started = console(TOKEN, monkeypatch)
    response = await app.pages["/console/dlq/redrive"].post(request(**kwargs, form=form))
    assert response.status == status and not started


async def test_redrive_post_with_cookie_and_csrf_starts_a_dry_run_and_redirects(monkeypatch):
    app, started = console(TOKEN, monkeypatch)
    response = await app.pages["/console/dlq/redrive"].post(request(cookie=SESSION, form=good_form(dry_run="1")))
    assert response.status == 303 and response.headers["Location"] == "/console/dlq/redrive/job-id-1234"
    [(selection, dry_run)] = started
    assert dry_run is True and selection.ids == ("notifications.dlq:0:1",)


@pytest.mark.parametrize("form", [
    {"mode": "selection"}, {"mode": "selection", "id": "notifications.dlq:0:x"}, {"mode": "selection", "id": "x.dlq:0:1"},
    {"mode": "filter", "service": "nope"}, {"mode": "filter", "since": "yesterday"}, {"mode": "everything"},
])
async def test_redrive_post_rejects_bad_selections(monkeypatch, form):
    app, started = console(TOKEN, monkeypatch)
    response = await app.pages["/console/dlq/redrive"].post(request(bearer=TOKEN, form=form))
    assert response.status == 400 and not started


async def test_order_ids_in_paths_are_validated(monkeypatch):
    app, _ = console(TOKEN, monkeypatch)
    view = app.pages["/console/orders/{order_id}"]
    response = await view.get(request("GET", "/console/orders/x", cookie=SESSION), order_id="<script>")
    assert response.status == 400 and "<script>" not in response.text
    find = await app.pages["/console/orders"].get(request("GET", "/console/orders?id=a%20b", cookie=SESSION))
    assert find.status == 400
