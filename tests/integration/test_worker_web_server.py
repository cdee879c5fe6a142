"""The worker's web server from outside, on one real worker (issue 23, items 4, 6, 7):

- idle and half-open connections are closed after ``WEB_KEEPALIVE_TIMEOUT`` / a body
  that stops after ``WEB_BODY_TIMEOUT``, and ``/health`` answers while a flood of them
  is held (they stayed open for minutes; at the file limit ``/health`` timed out);
- a malformed request's echoed header lines reach the log without the bearer token;
- no route answers 5xx or a traceback to any input (a hypothesis run over the routes).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.broker import EmbeddedBroker, KafkaBroker
from streams.http.sessions import SESSION_COOKIE, sessions_of
from harness.kafka import produce
from harness.worker import WorkerProcess, http_get, metric_value

pytestmark = pytest.mark.kafka

TOKEN = "web-server-test-token-" + "5d1e" * 6
DLQ = "notifications.dlq"
KEEPALIVE = 2.0
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def served(module_broker, tmp_path_factory) -> Iterator[tuple[EmbeddedBroker | KafkaBroker, WorkerProcess, list[str]]]:
    """One broker, one worker (token set, short timeouts, a low connection cap) and a DLQ
    holding hostile letters: a value nested 5,000 deep, forged failure times, raw bytes."""
    broker = module_broker
    where = tmp_path_factory.mktemp("web-server")
    worker = WorkerProcess(broker.url, where / "data", where / "worker.log", web_token=TOKEN,
                           web_keepalive_timeout=str(KEEPALIVE), web_body_timeout="2",
                           web_max_connections=str(MAX_CONNECTIONS))
    try:
        worker.start().wait_ready()
        base = [("x-dlq-reason", b"max_attempts"), ("x-attempt", b"3"),
                ("x-source-topic", b"events.order.paid.v1")]
        letters = [
            (b"o-deep", b"[" * 5000 + b"]" * 5000, [("x-failed-at", b"1700000000000")]),
            (b"o-digits", b"{}", [("x-failed-at", b"9" * 5000)]),
            (b"o-year", b"{}", [("x-failed-at", b"99999973155096016")]),
            (b"\xff\xfe", b"\x00\xff<script>", [("x-failed-at", b"-1"), ("x-error-message", b"\x1b[2J")]),
        ]

        async def put() -> None:
            for key, value, extra in letters:
                await produce(broker.bootstrap, DLQ, [(key, value)], headers=base + extra, partition=0)

        asyncio.run(put())
        ids = [f"{DLQ}:0:{i}" for i in range(len(letters))]
        yield broker, worker, ids
    finally:
        worker.stop(timeout=20)  # leaves the group (the broker may be the session's Kafka)
        worker.kill()


def raw_request(port: int, data: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Sends ``data`` as it is, reads until the server closes; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    return (int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0), body


# -- item 4 -------------------------------------------------------------------------------


async def test_idle_and_half_open_connections_are_closed_and_health_answers_during_a_flood(served):
    """Half-open requests stayed open (one after 170 s); at the file limit /health timed out."""
    _, worker, _ = served
    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    partial = [b"",  # connect and say nothing
               b"GET /console HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",  # a request head that never ends
               b"POST /console/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded"
               b"\r\nContent-Length: 1000\r\n\r\ntoken=abc"]  # a body that never ends
    for i in range(5 * MAX_CONNECTIONS):
        reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
        if partial[i % 3]:
            writer.write(partial[i % 3])
            await writer.drain()
        flood.append((reader, writer))
    # While the flood is held, /health still gets in (the quietest connections make room).
    for _ in range(3):
        status, _ = await asyncio.to_thread(http_get, f"{worker.url}/health", 10)
        assert status == 200

    async def closed_by_server(reader: asyncio.StreamReader) -> bool:
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        return True

    try:
        done = await asyncio.wait_for(asyncio.gather(*(closed_by_server(r) for r, _ in flood)), 30)
        assert all(done)
    finally:
        for _, writer in flood:
            writer.close()
    text = await asyncio.to_thread(worker.metrics)
    assert metric_value(text, "web_connections_evicted_total") >= 5 * MAX_CONNECTIONS - MAX_CONNECTIONS
    assert (await asyncio.to_thread(http_get, f"{worker.url}/health", 10))[0] == 200


# -- item 7 -------------------------------------------------------------------------------


def test_a_malformed_request_with_a_bearer_token_is_logged_without_the_token(served):
    """aiohttp logged the header line it choked on verbatim at ERROR, the token included."""
    _, worker, _ = served
    before = worker.log_path.read_bytes().count(b"Error handling request")
    status, _ = raw_request(worker.port, f"GET /console HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                         f"Authorization: Bearer {TOKEN}\x01\r\n\r\n".encode())
    assert status == 400
    deadline = time.monotonic() + 20
    while worker.log_path.read_bytes().count(b"Error handling request") == before:
        assert time.monotonic() < deadline, "aiohttp did not log the malformed request"
        time.sleep(0.1)
    log = worker.log_path.read_text(errors="replace")
    assert TOKEN not in log and TOKEN[:24] not in log
    assert "Authorization: ***" in log


# -- item 6: any input, no 5xx, no traceback ----------------------------------------------

ROUTES = ["/", "/health", "/metrics", "/orders/{}", "/inventory/{}", "/console", "/console/",
          "/console/dlq", "/console/dlq/letters/{}", "/console/dlq/letters/{}/value", "/console/dlq/redrive",
          "/console/dlq/redrive/{}", "/console/dlq/redrive/{}/live", "/console/api/redrive/{}",
          "/console/api/overview", "/console/overview/live", "/console/orders", "/console/orders/{}",
          "/console/inventory", "/console/inventory/{}", "/console/login", "/console/logout",
          "/console/login/assets/{}", "/table/order-state/{}/"]
QUERY_KEYS = ["service", "reason", "since", "key", "after", "limit", "next", "id", "sku", "mode"]

hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["9" * 400, "9" * 400 + "d", "9" * 5000, "²", "-1", "0", "notifications", "max_attempts",
                     "2024-01-01T00:00", "99999-01-01", "1e400d", "\x00", "%ff", "..", "<script>",
                     "notifications.dlq:0:0", "notifications.dlq:0:" + "9" * 30, "notifications.dlq:9:0"]),
)
raw_bytes = st.one_of(st.binary(max_size=40), st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"a" * 9000]))


@st.composite
def requests(draw: st.DrawFn, ids: list[str], port: int) -> bytes:
    route = draw(st.sampled_from(ROUTES))
    segment = draw(st.one_of(st.sampled_from(ids), hostile_text))
    path = route.replace("{}", quote(segment, safe=""))
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), hostile_text, max_size=4))
    if query:
        path += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query.items())
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "HEAD"]))
    own = f"127.0.0.1:{port}".encode()
    headers = [b"Host: " + draw(st.sampled_from([own, own, own, own, b"evil.example", b"\xff"])),
               b"Connection: close"]
    auth = draw(st.sampled_from(["token", "token", "token", "session", "session", "none", "wrong", "raw",
                                 "cookie-raw"]))
    if auth == "token":
        headers.append(f"Authorization: Bearer {TOKEN}".encode())
    elif auth == "wrong":
        headers.append(b"Authorization: Bearer " + draw(st.binary(max_size=20)).replace(b"\r", b"").replace(b"\n", b""))
    elif auth == "raw":
        headers.append(b"Authorization: " + draw(raw_bytes).replace(b"\r", b"").replace(b"\n", b""))
    elif auth == "session":
        headers.append(f"Cookie: {SESSION_COOKIE}={sessions_of(TOKEN).issue()}".encode())
    elif auth == "cookie-raw":
        headers.append(b"Cookie: " + draw(raw_bytes).replace(b"\r", b"").replace(b"\n", b""))
    if draw(st.booleans()):
        headers.append(b"Origin: " + draw(st.sampled_from([f"http://127.0.0.1:{port}".encode(), b"null",
                                                            b"https://evil.example", b"\xff://x"])))
    if draw(st.booleans()):
        headers.append(b"Accept: application/json")
    body = b""
    if method == "POST":
        form = draw(st.dictionaries(st.sampled_from(QUERY_KEYS + ["csrf", "token"]), hostile_text, max_size=5))
        form["dry_run"] = "1"  # a fuzzer never redrives for real
        body = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in form.items()).encode()
        if draw(st.booleans()):
            body += b"&id=" + quote(draw(st.sampled_from(ids))).encode()
        headers += [b"Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}".encode()]
    return f"{method} {path} HTTP/1.1\r\n".encode() + b"\r\n".join(headers) + b"\r\n\r\n" + body


def test_no_route_answers_5xx_or_a_traceback_to_any_input(served):
    """A property over the worker's routes: console pages, views, DLQ pages and letters
    (hostile ones among them), any method, path segment, query, credential and origin."""
    _, worker, ids = served
    seen: dict[int, int] = {}

    @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=requests(ids, worker.port))
    def answer_is_not_a_server_error(data: bytes) -> None:
        status, body = raw_request(worker.port, data)
        seen[status] = seen.get(status, 0) + 1
        assert 0 < status < 500, (status, data[:300], body[:300])
        assert b"Traceback" not in body, (data[:300], body[:300])

    answer_is_not_a_server_error()
    # the run reached the pages, not only refusals
    assert seen.get(200, 0) > 10 and seen.get(400, 0) > 0, seen
    # and every hostile letter renders, by id, with the token
    for letter_id in ids:
        for suffix in ("", "/value"):
            status, body = raw_request(worker.port, f"GET /console/dlq/letters/{letter_id}{suffix} HTTP/1.1\r\n"
                                       f"Host: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                                       "Connection: close\r\n\r\n".encode())
            assert status == 200, (letter_id, suffix, body[:300])
    status, body = raw_request(worker.port, f"GET /console/dlq?limit=10 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode())
    assert status == 200 and b"99999973155096016" in body and b"9999999999" in body, body[:300]
