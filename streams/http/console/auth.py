"""Who may do what in the console, and the sign-in form.

- Without ``WEB_TOKEN`` the console is read-only: no redrive button is rendered and
  every write (``POST /console/dlq/redrive``) is refused with 403 (and the worker
  answers only requests whose ``Host`` is its own: :func:`streams.http.web.host_middleware`).
- With it, the worker's auth middleware (:func:`streams.http.web.auth_middleware`) lets a
  request through with ``Authorization: Bearer <token>`` or the session cookie
  :data:`streams.http.sessions.SESSION_COOKIE` carrying a valid signed session
  (:class:`streams.http.sessions.Sessions`: never the token itself; it expires, and signing out
  revokes it). The console's own middleware (:func:`console_middleware`, outermost)
  sends a browser without either to the sign-in form, which sets that cookie:
  HttpOnly, SameSite=Strict, Path=/console.
- Sign-in attempts are throttled per client address (:class:`SignInThrottle`): every
  wrong token waits :data:`WRONG_TOKEN_DELAY`, and an address with
  :data:`MAX_FAILURES` wrong tokens (or attempts still in flight) within
  :data:`FAILURE_WINDOW` seconds is answered 429 without its token being looked at —
  so 300 parallel guesses get 5 answers, not 300. Failures are logged (the address,
  never the token) and counted in ``console_sign_in_failures_total{outcome}``.
- A write authorised by the cookie must also be same-origin (``Origin`` — scheme,
  host and port — and ``Sec-Fetch-Site``, when the browser sends them) and carry the
  CSRF token — an HMAC of the token, so every worker of a deployment derives the same
  one — in its form (:func:`write_refusal`). A request with the Bearer header carries
  no ambient credential and needs neither.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web as aioweb

from streams.http.console.html import e, hidden, page
from streams.http.sessions import SESSION_COOKIE, SESSION_SECONDS, bad_encoding, sessions_of, token_ok

log = logging.getLogger(__name__)

LOGIN = "/console/login"
COOKIE_PATH = "/console"
COOKIE_MAX_AGE = SESSION_SECONDS
#: Seconds a wrong token waits before its answer (slows guessing down).
WRONG_TOKEN_DELAY = 0.5
#: Wrong tokens (plus attempts in flight) one client address may send per window.
MAX_FAILURES = 5
#: Seconds over which an address's failures count.
FAILURE_WINDOW = 60.0
#: Client addresses remembered at once (the oldest are forgotten first).
MAX_CLIENTS = 10_000
#: Sign-in attempts checked at once over every address (the rest: 429).
MAX_IN_FLIGHT = 64
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chrome send Origin: null on form posts
    "Cache-Control": "no-store",
}


def csrf_token(token: str) -> str:
    """The CSRF token of a session: derived from ``WEB_TOKEN`` (the same on every worker)."""
    return hmac.new(token.encode(), b"order-streams console csrf v1", hashlib.sha256).hexdigest() if token else ""


def signed_in(request: Any, token: str) -> bool:
    return bool(token) and token_ok(request, token)


def bearer(request: Any) -> bool:
    return request.headers.get("Authorization", "").startswith("Bearer ")


def same_origin(request: Any, canonical_url: str = "") -> bool:
    """False when the browser says the request comes from another site or origin.

    ``Origin`` must be this server's origin — scheme, host and port: the request's own
    (``http://`` + ``Host``, ``https://`` over TLS) or ``canonical_url``'s (a worker
    behind a TLS-terminating proxy): ``http://`` is not ``https://``."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # older browsers: the CSRF token decides
    if origin == "null":
        return False
    try:
        given = urlsplit(origin)
    except ValueError:
        return False
    mine = {(request.scheme, (request.host or "").lower())}
    if canonical_url:
        canon = urlsplit(canonical_url)
        mine.add((canon.scheme, canon.netloc.lower()))
    return (given.scheme.lower(), given.netloc.lower()) in mine


class SignInThrottle:
    """Wrong-token accounting per client address (see the module's docstring).

    Rule: :meth:`admit` is asked *before* a token is compared and counts the attempt
    as in flight, so parallel attempts of one address are limited as sequential
    ones are; :meth:`done` ends it (``failed``: it counts for the window)."""

    def __init__(self, *, max_failures: int = MAX_FAILURES, window: float = FAILURE_WINDOW,
                 max_clients: int = MAX_CLIENTS, max_in_flight: int = MAX_IN_FLIGHT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window, self.max_clients = max_failures, window, max_clients
        self.max_in_flight = max_in_flight
        self.clock = clock
        #: address -> (failure times in the window, attempts in flight)
        self.clients: OrderedDict[str, tuple[list[float], int]] = OrderedDict()
        self.in_flight = 0

    def admit(self, address: str) -> bool:
        now = self.clock()
        failures, flying = self.clients.pop(address, ([], 0))
        failures = [t for t in failures if now - t < self.window]
        ok = len(failures) + flying < self.max_failures and self.in_flight < self.max_in_flight
        if ok:
            flying += 1
            self.in_flight += 1
        self.clients[address] = (failures, flying)
        while len(self.clients) > self.max_clients:
            self.clients.popitem(last=False)
        return ok

    def done(self, address: str, failed: bool) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        failures, flying = self.clients.pop(address, ([], 1))
        if failed:
            failures.append(self.clock())
        self.clients[address] = (failures, max(0, flying - 1))

    def retry_after(self, address: str) -> int:
        failures, _ = self.clients.get(address, ([], 0))
        return max(1, int(self.window - (self.clock() - failures[0])) + 1) if failures else 1


def sign_in_counter(registry: Any) -> Any:
    """``console_sign_in_failures_total{outcome="wrong_token"|"throttled"}`` on the
    worker's Prometheus registry."""
    from prometheus_client import CollectorRegistry, Counter

    return Counter("console_sign_in_failures", "Console sign-ins refused: a wrong token, or throttled "
                   "(too many wrong tokens from one address)", ["outcome"],
                   registry=registry if registry is not None else CollectorRegistry())


def write_refusal(request: Any, token: str, form: Mapping[str, str],
                  canonical_url: str = "") -> tuple[int, str] | None:
    """None when ``request`` may change something (a redrive), else (status, why)."""
    if not token:
        return 403, "read-only console: this worker has no WEB_TOKEN, so nothing can be redriven from it"
    if not token_ok(request, token):
        return 401, "sign in first: the console's token is missing or wrong"
    if bearer(request):
        return None
    if not same_origin(request, canonical_url):
        return 403, "refused: a cross-site request"
    given = form.get("csrf", "")
    if not given or not hmac.compare_digest(given.encode(), csrf_token(token).encode()):
        return 403, "refused: the form's CSRF token is missing or wrong (reload the page)"
    return None


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path of this server, never another site."""
    if not value or not value.startswith("/console") or value.startswith("//") or "\\" in value:
        return "/console"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/console"
    return value


def html_response(body: str, status: int = 200) -> aioweb.Response:
    return aioweb.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def see_other(location: str) -> aioweb.Response:
    return aioweb.Response(status=303, headers={"Location": location})


def console_middleware(token: str) -> Callable[..., Awaitable[Any]]:
    """Outermost middleware for ``/console…``: a browser that is not signed in is sent to
    the sign-in form (GET pages; JSON under ``/console/api/`` and the ``…/live`` parts
    the pages' script fetches get the auth middleware's 401 instead); security headers
    on every console answer."""

    @aioweb.middleware
    async def console(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        path = request.path
        if path != "/console" and not path.startswith("/console/"):
            return await handler(request)
        refused = bad_encoding(request)
        if refused is not None:
            response: Any = refused
        elif (token and request.method in ("GET", "HEAD") and not path.startswith(LOGIN)
                and not path.startswith("/console/api/") and not path.endswith("/live")
                and not token_ok(request, token)):
            response = see_other(f"{LOGIN}?next={quote(request.path_qs, safe='')}")
        else:
            response = await handler(request)
        for name, value in SECURITY_HEADERS.items():
            if name not in response.headers:
                response.headers[name] = value
        return response

    return console


def login_form(next_path: str, error: str = "", read_only: bool = False) -> str:
    if read_only:
        body = ('<div class="card login"><p>This worker has no <code>WEB_TOKEN</code>: the console is '
                'read-only and needs no sign-in.</p><p><a href="/console">Open the console</a></p></div>')
        return page("Sign in", body, read_only=True, bare=True)
    err = f'<p class="notice bad">{e(error)}</p>' if error else ""
    body = (
        f'<form class="card login" method="post" action="{LOGIN}">{err}'
        '<p>Enter the worker\'s <code>WEB_TOKEN</code>. It is kept in an HttpOnly cookie for this '
        'console only; sign out to forget it.</p>'
        '<label for="token">Token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        f'{hidden("next", next_path)}<button type="submit" id="sign-in">Sign in</button></form>'
    )
    return page("Sign in", body, bare=True)


def client_address(request: Any) -> str:
    """Whom to throttle: the peer's address (a proxy in front makes every client one)."""
    return str(request.remote or "?")


def register_auth(app: Any, token: str, *, secure_cookie: bool = False, canonical_url: str = "",
                  metrics_registry: Any = None, throttle: SignInThrottle | None = None) -> None:
    """``GET/POST /console/login`` (open: the auth middleware exempts the prefix) and
    ``POST /console/logout``."""
    from faust.web import View

    sessions = sessions_of(token) if token else None
    throttle = throttle or SignInThrottle()
    failures = sign_in_counter(metrics_registry)

    class Login(View):
        async def get(self, request: Any) -> Any:
            nxt = safe_next(request.query.get("next"))
            if token and token_ok(request, token):
                return see_other(nxt)
            return html_response(login_form(nxt, read_only=not token))

        async def post(self, request: Any) -> Any:
            form = await request.post()
            nxt = safe_next(form.get("next"))
            if not token or sessions is None:
                return html_response(login_form(nxt, read_only=True), status=403)
            if not same_origin(request, canonical_url):
                return html_response(login_form(nxt, "Refused: a cross-site sign-in."), status=403)
            address = client_address(request)
            if not throttle.admit(address):
                failures.labels("throttled").inc()
                log.warning("console sign-in throttled: too many wrong tokens from %s", address,
                            extra={"client": address})
                wait = throttle.retry_after(address)
                response = html_response(login_form(nxt, f"Too many wrong tokens: try again in {wait} s."), 429)
                response.headers["Retry-After"] = str(wait)
                return response
            failed = True
            try:
                given = str(form.get("token", ""))
                if given and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
                    failed = False
                    response = see_other(nxt)
                    response.set_cookie(SESSION_COOKIE, sessions.issue(), path=COOKIE_PATH, max_age=COOKIE_MAX_AGE,
                                        httponly=True, samesite="Strict", secure=secure_cookie or request.secure)
                    return response
                failures.labels("wrong_token").inc()
                log.warning("console sign-in with a wrong token from %s", address, extra={"client": address})
                await asyncio.sleep(WRONG_TOKEN_DELAY)
                return html_response(login_form(nxt, "Wrong token."), status=401)
            finally:
                throttle.done(address, failed)

    class Logout(View):
        async def post(self, request: Any) -> Any:
            form = await request.post()
            refusal = write_refusal(request, token, form, canonical_url)
            if refusal is not None and refusal[0] != 401:
                return html_response(page("Sign out", f'<p class="notice bad">{e(refusal[1])}</p>'), refusal[0])
            if sessions is not None:
                sessions.revoke(request.cookies.get(SESSION_COOKIE, ""))
            response = see_other(LOGIN)
            response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
            return response

    app.page(LOGIN, name="console_login")(Login)
    app.page("/console/logout", name="console_logout")(Logout)
