"""Sign-in that holds (issue 23, item 8): the session cookie is a signed, expiring,
revocable session — never ``WEB_TOKEN`` itself; wrong tokens are slowed, limited per
client address (parallel ones too), logged and counted; a short ``WEB_TOKEN`` stops
start-up; ``Origin`` is compared with its scheme; without a token a request must name
this worker in ``Host`` (DNS rebinding)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web as aioweb
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, MultiDict, MultiDictProxy
from prometheus_client import CollectorRegistry

from streams.http.console import auth
from streams.settings import SettingsError, WorkerSettings, load_settings
from streams.http.sessions import SESSION_COOKIE, Sessions, sessions_of, token_ok
from streams.http.web import host_middleware, own_hosts

TOKEN = "sign-in-test-token-0123456789abcdef"
HOST = "127.0.0.1:6066"


class Transport:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def request(method: str = "POST", path: str = "/console/login", *, cookie: str | None = None,
            host: str = HOST, origin: str | None = None, peer: str = "10.0.0.1",
            form: dict[str, str] | None = None) -> Any:
    headers = CIMultiDict({"Host": host})
    if cookie is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    if origin is not None:
        headers["Origin"] = origin
    req = make_mocked_request(method, path, headers=headers, transport=Transport(peer))
    req._post = MultiDictProxy(MultiDict(list((form or {}).items())))
    return req


class Pages:
    def __init__(self) -> None:
        self.pages: dict[str, Any] = {}

    def page(self, path: str, name: str | None = None) -> Any:
        def add(view: Any) -> Any:
            self.pages[path] = view(self, None)
            return view

        return add


def sign_in_pages(registry: CollectorRegistry | None = None) -> Pages:
    app = Pages()
    auth.register_auth(app, TOKEN, metrics_registry=registry)
    return app


async def test_the_session_cookie_is_signed_not_the_token_and_sign_out_revokes_it():
    app = sign_in_pages()
    response = await app.pages["/console/login"].post(request(form={"token": TOKEN, "next": "/console"}))
    assert response.status == 303
    cookie = response.cookies[SESSION_COOKIE].value
    assert TOKEN not in cookie
    assert token_ok(request("GET", "/console", cookie=cookie), TOKEN)
    # The raw token is no session (the old cookie was the token: signing out could not revoke it).
    assert not token_ok(request("GET", "/console", cookie=TOKEN), TOKEN)
    # Sign-out (with the page's CSRF token) revokes this session; a copy of the cookie is dead.
    out = await app.pages["/console/logout"].post(
        request(path="/console/logout", cookie=cookie, form={"csrf": auth.csrf_token(TOKEN)}))
    assert out.status == 303
    assert not token_ok(request("GET", "/console", cookie=cookie), TOKEN)
    # Another session of the same token still holds.
    assert token_ok(request("GET", "/console", cookie=sessions_of(TOKEN).issue()), TOKEN)


def test_a_session_expires_and_a_tampered_one_is_refused():
    now = [1_000_000.0]
    sessions = Sessions(TOKEN, lifetime=3600, clock=lambda: now[0])
    cookie = sessions.issue()
    assert sessions.valid(cookie)
    now[0] += 3599
    assert sessions.valid(cookie)
    now[0] += 2
    assert not sessions.valid(cookie)
    now[0] = 1_000_000.0
    v, sid, expiry, issued, mac = cookie.split(".")
    forged = [f"{v}.{sid}.{int(expiry) + 10**6}.{issued}.{mac}", f"{v}.{'0' * 32}.{expiry}.{issued}.{mac}",
              f"{v}.{sid}.{expiry}.{issued}.{'0' * 64}", "", "v1....", "v1.a.9" + "9" * 400 + ".1.x", TOKEN]
    assert not any(sessions.valid(f) for f in forged)
    # A session of another token is not one of this token.
    assert not Sessions(TOKEN + "x", clock=lambda: now[0]).valid(cookie)


async def test_parallel_wrong_tokens_from_one_address_are_throttled_logged_and_counted(monkeypatch, caplog):
    """300 parallel wrong tokens all passed the 0.5 s delay together, nothing logged."""
    monkeypatch.setattr(auth, "WRONG_TOKEN_DELAY", 0.05)
    registry = CollectorRegistry()
    app = sign_in_pages(registry)
    login = app.pages["/console/login"]
    with caplog.at_level(logging.WARNING, logger="streams.http.console.auth"):
        answers = await asyncio.gather(*(login.post(request(form={"token": f"guess-{i}"})) for i in range(300)))
    statuses = [r.status for r in answers]
    assert statuses.count(401) == auth.MAX_FAILURES and statuses.count(429) == 300 - auth.MAX_FAILURES
    assert all(r.headers.get("Retry-After", "").isdigit() for r in answers if r.status == 429)
    # Even the right token now waits for the window: the address is throttled.
    assert (await login.post(request(form={"token": TOKEN}))).status == 429
    # Another address is not.
    assert (await login.post(request(form={"token": TOKEN}, peer="10.0.0.2"))).status == 303
    assert registry.get_sample_value("console_sign_in_failures_total", {"outcome": "wrong_token"}) == 5
    assert registry.get_sample_value("console_sign_in_failures_total", {"outcome": "throttled"}) == 296
    wrong = [r for r in caplog.records if "wrong token" in r.getMessage()]
    assert wrong and all("10.0.0.1" in r.getMessage() and "guess" not in r.getMessage() for r in wrong)


def test_the_throttle_forgets_failures_after_its_window_and_bounds_its_memory():
    now = [0.0]
    throttle = auth.SignInThrottle(max_failures=2, window=60, max_clients=100, clock=lambda: now[0])
    for _ in range(2):
        assert throttle.admit("a")
        throttle.done("a", failed=True)
    assert not throttle.admit("a")
    now[0] += 61
    assert throttle.admit("a")
    for i in range(1000):
        throttle.admit(f"c{i}")
    assert len(throttle.clients) == 100


@pytest.mark.parametrize("length", [1, 12, 31])
def test_a_web_token_shorter_than_32_characters_stops_start_up_with_one_line(length, capsys):
    token = "Q7" * (length // 2) + "Z" * (length % 2)
    with pytest.raises(SettingsError):
        load_settings(web_token=token)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "WEB_TOKEN" in err and "32" in err and (token not in err or length < 3)
    assert load_settings(web_token="k" * 32).web_token.get_secret_value() == "k" * 32
    assert load_settings(web_token="").web_token.get_secret_value() == ""


@pytest.mark.parametrize("origin,ok", [
    (f"http://{HOST}", True), (f"https://{HOST}", False), (f"ftp://{HOST}", False),
    ("http://127.0.0.1:6067", False), ("https://console.example", True), ("http://console.example", False),
])
def test_origin_is_compared_with_its_scheme(origin, ok):
    req = request(origin=origin)
    assert auth.same_origin(req, canonical_url="https://console.example") is ok


async def test_without_a_token_a_request_naming_another_host_is_refused():
    """A DNS-rebinding page sends its own name as Host: without WEB_TOKEN nothing checked it."""
    settings = WorkerSettings(web_host="127.0.0.1", web_allowed_hosts="orders-console.internal")
    middleware = host_middleware(own_hosts(settings))

    async def handler(r: Any) -> Any:
        return aioweb.Response(text="console")

    async def status(path: str, host: str) -> int:
        return (await middleware(request("GET", path, host=host), handler)).status

    for host in ("attacker.example", "attacker.example:6066", "127.0.0.1.attacker.example", ""):
        assert await status("/console", host) == 421, host
        assert await status("/orders/o-1", host) == 421, host
    for host in (HOST, "localhost:6066", "[::1]:6066", "127.0.0.1", "ORDERS-CONSOLE.internal:80"):
        assert await status("/console", host) == 200, host
    # /health and /metrics are open to anyone with a token too: any Host.
    assert await status("/health", "attacker.example") == 200
    assert await status("/metrics", "attacker.example") == 200


def test_the_canonical_url_host_is_the_workers_own():
    settings = WorkerSettings(web_host="0.0.0.0", canonical_url="http://worker-3.orders:6066")
    assert "worker-3.orders" in own_hosts(settings)
