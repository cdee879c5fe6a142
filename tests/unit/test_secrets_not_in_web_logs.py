"""Secrets never in logs (issue 23, item 7): aiohttp logs a malformed request at ERROR
with the offending request or header line verbatim — an ``Authorization: Bearer …`` or
the console's session cookie included. The worker's logging configuration
(:func:`streams.logs.build_config`) redacts them, and the settings' secrets."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
from collections.abc import Iterator

import pytest
from aiohttp import web

from streams import logs
from streams.settings import WorkerSettings
from streams.http.sessions import SESSION_COOKIE
from streams.http.web import settings_secrets

TOKEN = "tok-" + "7f3a9c" * 8
SESSION = "v1.0123456789abcdef0123456789abcdef.1999999999.1700000000." + "ab" * 32
PASSWORD = "pa55-w0rd-of-the-db"


@pytest.fixture
def worker_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The worker's logging configuration (as ``create_app`` builds it) writing to a buffer."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in logs.QUIET_LOGGERS})
    monkeypatch.setattr(logs, "_SECRETS", set())
    config = logs.build_config("text", "INFO", "worker")
    config["handlers"]["stderr"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


async def send_raw(requests: list[bytes]) -> list[bytes]:
    app = web.Application()
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    answers = []
    try:
        for raw in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.read(), 10))
            writer.close()
    finally:
        await runner.cleanup()
    return answers


MALFORMED = [
    # a control character in the Authorization value: aiohttp echoes the whole header line
    f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\x01\r\n\r\n".encode(),
    # a bad header after the credentials
    f"GET / HTTP/1.1\r\nHost: x\r\nCookie: {SESSION_COOKIE}={SESSION}\x7f\r\n\r\n".encode(),
    # the token in the request line (a query parameter) with a NUL
    f"GET /console?token={TOKEN}\x00 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    # Proxy-Authorization, Basic credentials
    f"GET / HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {TOKEN}\x02\r\n\r\n".encode(),
]


async def test_a_malformed_request_with_a_bearer_token_leaves_no_secret_in_the_log(worker_log):
    logs.add_secrets(*settings_secrets(WorkerSettings(
        web_token=TOKEN, database_url=f"postgresql://orders:{PASSWORD}@db:5432/orders")))
    answers = await send_raw(MALFORMED)
    assert all(a.startswith(b"HTTP/1.") and b" 400 " in a.split(b"\r\n")[0] for a in answers), answers
    text = worker_log.getvalue()
    # aiohttp did log every one of them, at ERROR, with the line it choked on ...
    assert text.count("[ERROR] aiohttp.server: Error handling request") == len(MALFORMED), text
    assert "Authorization: ***" in text and "Cookie: ***" in text
    # ... but none of the credentials
    for secret in (TOKEN, SESSION, TOKEN[:20], SESSION[:40]):
        assert secret not in text, secret


def test_the_settings_secrets_are_found_and_redacted_from_any_aiohttp_record(worker_log):
    secrets = settings_secrets(WorkerSettings(web_token=TOKEN,
                                              database_url=f"postgresql://orders:{PASSWORD}@db/orders"))
    assert TOKEN in secrets and PASSWORD in secrets
    logs.add_secrets(*secrets)
    logging.getLogger("aiohttp.web").error("echo %s and %s", TOKEN, PASSWORD)
    logging.getLogger("streams.something").warning("dsn postgresql://orders:%s@db", PASSWORD)
    text = worker_log.getvalue()
    assert TOKEN not in text and PASSWORD not in text and text.count("***") >= 3


def test_redact_masks_credential_headers_and_schemes():
    line = (f"b'Authorization: Bearer {TOKEN}' b'cookie:{SESSION_COOKIE}={SESSION}' "
            f"GET /?q=Bearer%20{TOKEN} Basic {TOKEN}")
    out = logs.redact(line)
    assert TOKEN not in out and SESSION not in out
    assert logs.redact("GET /orders/o-1 HTTP/1.1") == "GET /orders/o-1 HTTP/1.1"
