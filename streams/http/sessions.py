"""Who may use the worker's web server: the ``WEB_TOKEN`` check and the console's sessions.

A request is authorised by ``Authorization: Bearer <WEB_TOKEN>`` or by the console's
session cookie (:func:`token_ok`). Credential headers that are not UTF-8 are a 400
(:func:`bad_encoding`), never a 500.

Sessions (the console's cookie) are never the token itself (:class:`Sessions`): a
cookie is ``v1.<session id>.<expiry>.<issued>.<mac>``, the MAC an HMAC-SHA256 over
them with a key derived from ``WEB_TOKEN`` (so every worker of a deployment accepts
it, and changing the token ends every session). It expires after
:data:`SESSION_SECONDS`; signing out revokes its id in this worker's revocation set
(kept until the session would have expired anyway; another worker that also serves
this console learns nothing of it — restart it or change ``WEB_TOKEN`` to end every
session everywhere).

Its own module so that the web routes (:mod:`streams.http.web`) and the console
(:mod:`streams.http.console.auth`) both use it without importing each other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web as aioweb

SESSION_COOKIE = "order_streams_session"


#: Seconds a console session lasts.
SESSION_SECONDS = 12 * 3600
#: Sessions revoked (signed out) that this worker remembers at most; beyond it the
#: oldest revocations are dropped early — and every session older than the oldest
#: one kept is refused, so none is let back in.
MAX_REVOKED = 100_000


class Sessions:
    """Signed, expiring, revocable session cookies for one ``WEB_TOKEN``.

    Rule: a cookie is valid when its MAC (HMAC-SHA256 over ``v1.<id>.<expiry>`` with
    the key HMAC(token, "order-streams session key v1")) is right, its expiry is in
    the future (and at most :data:`SESSION_SECONDS` away), and its id was not revoked
    here. The token is never in the cookie; a stolen cookie dies at its expiry or at
    sign-out."""

    def __init__(self, token: str, *, lifetime: float = SESSION_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.key = hmac.new(token.encode(), b"order-streams session key v1", hashlib.sha256).digest()
        self.lifetime = lifetime
        self.clock = clock
        #: session id -> its expiry (forgotten once expired)
        self.revoked: dict[str, int] = {}
        #: sessions issued before this time are refused (set when revocations overflow)
        self.not_before = 0

    def _mac(self, sid: str, expiry: int, issued: int) -> str:
        return hmac.new(self.key, f"v1.{sid}.{expiry}.{issued}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()

    def issue(self) -> str:
        now = int(self.clock())
        sid, expiry = secrets.token_hex(16), now + int(self.lifetime)
        return f"v1.{sid}.{expiry}.{now}.{self._mac(sid, expiry, now)}"

    def _parse(self, cookie: str) -> tuple[str, int, int] | None:
        parts = cookie.split(".")
        if len(parts) != 5 or parts[0] != "v1" or len(cookie) > 200:
            return None
        _, sid, expiry_s, issued_s, mac = parts
        if not (expiry_s.isdigit() and issued_s.isdigit() and len(expiry_s) <= 12 and len(issued_s) <= 12):
            return None
        expiry, issued = int(expiry_s), int(issued_s)
        if not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(sid, expiry, issued).encode()):
            return None
        return sid, expiry, issued

    def valid(self, cookie: str) -> bool:
        parsed = self._parse(cookie)
        if parsed is None:
            return False
        sid, expiry, issued = parsed
        now = self.clock()
        return (now < expiry <= now + self.lifetime + 60 and issued >= self.not_before
                and sid not in self.revoked)

    def revoke(self, cookie: str) -> bool:
        """Sign-out: the cookie's session is refused from now on (True if it was valid)."""
        parsed = self._parse(cookie)
        if parsed is None:
            return False
        sid, expiry, _ = parsed
        now = self.clock()
        for old in [s for s, exp in self.revoked.items() if exp <= now]:
            del self.revoked[old]
        self.revoked[sid] = expiry
        while len(self.revoked) > MAX_REVOKED:
            oldest = next(iter(self.revoked))
            del self.revoked[oldest]
            self.not_before = int(now)  # refuse everything issued up to now instead
        return True


_SESSIONS: dict[str, Sessions] = {}


def sessions_of(token: str) -> Sessions:
    """This process's :class:`Sessions` for ``token`` (one revocation set per token)."""
    if token not in _SESSIONS:
        _SESSIONS[token] = Sessions(token)
    return _SESSIONS[token]


def token_ok(request: Any, token: str) -> bool:
    """``Authorization: Bearer <token>``, or the console's session cookie a valid
    session of ``token`` (:class:`Sessions`)."""
    if not token or bad_encoding(request) is not None:
        return False
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return hmac.compare_digest(header[7:].encode("utf-8", "surrogateescape"), token.encode())
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return bool(cookie) and sessions_of(token).valid(cookie)


#: Headers whose values must be UTF-8 (credentials: a comparison encodes them).
CREDENTIAL_HEADERS = ("Authorization", "Cookie")


def bad_encoding(request: Any) -> aioweb.Response | None:
    """400 when a credential header is not UTF-8 (aiohttp hands such bytes over as
    surrogates, and encoding them for a comparison raised: a 500), else None."""
    for name in CREDENTIAL_HEADERS:
        for value in request.headers.getall(name, ()):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return aioweb.json_response({"error": f"bad request: the {name} header is not UTF-8"}, status=400)
    return None


