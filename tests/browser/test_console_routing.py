"""Every worker serves the console, and a page about a key another worker owns is
answered by that worker (Faust's ``table_route``, the session cookie passed along):
two workers with the token, every order's page asked of both."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

from streams.events import OrderCreated
from streams.http.sessions import SESSION_COOKIE, sessions_of
from harness.events import created
from harness.kafka import produce

pytestmark = pytest.mark.kafka

TOKEN = "console-routing-token-of-32-characters-or-more"
#: A signed session of TOKEN (what the sign-in form sets; every worker of the token accepts it).
SESSION = sessions_of(TOKEN).issue()


def get(url: str, cookie: str | None = SESSION) -> tuple[int, str]:
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_order_pages_are_answered_by_the_owner_through_any_worker(broker, worker_factory):
    workers = [worker_factory(name, web_token=TOKEN).start() for name in ("w1", "w2")]
    for w in workers:
        w.wait_ready()
    orders = [f"o-{i}" for i in range(300, 312)]
    asyncio.run(produce(broker.bootstrap, OrderCreated.topic(), [created(o) for o in orders]))

    def answers() -> dict[tuple[str, str], int]:
        out = {}
        for w in workers:
            for o in orders:
                status, body = get(f"{w.url}/console/orders/{o}")
                out[(w.url, o)] = status if status != 200 or "OrderCreated" in body else -1
        return out

    deadline = time.monotonic() + 90
    while True:
        seen = answers()
        if all(s == 200 for s in seen.values()):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)

    # both workers own order-state partitions, so half the answers above were routed
    owners = []
    for w in workers:
        status, body = get(f"{w.url}/health", cookie=None)
        owners.append({a for a in json.loads(body)["assigned"] if "order-state-changelog" in a})
    assert all(owners) and not owners[0] & owners[1], owners
    # the routed answer is the owner's page, not a redirect to a sign-in form
    status, body = get(f"{workers[0].url}/console/orders/{orders[0]}", cookie=None)
    assert status in (303, 200) and "OrderCreated" not in body
