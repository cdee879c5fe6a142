"""The order service's input bounds (issue 12), against the real ``python -m orders
serve`` process with its default limits (relay off: nothing needs a broker).

Found before: a body of exactly 1 MiB was accepted (201) and its ``OrderCreated`` of
1,048,733 bytes could never be published (retried forever, holding back the order's
later events); an order of 1,000 SKUs (36 KB) was accepted; no bounds on item count,
quantity, amount or field lengths; the content type was ignored.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

#: What a hostile or careless client may send where ``{"user_id","items","amount"}`` is expected.
VALID = {"user_id": "u-1", "items": [{"sku": "s-1", "qty": 2}], "amount": "12.50"}


def request(url: str, method: str = "POST", body: bytes | None = None,
            content_type: str | None = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if content_type is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (ConnectionError, urllib.error.URLError) as exc:  # the server may close on an oversized body
        return 0, repr(exc).encode()


@pytest.fixture
def orders(orders_factory, tmp_path: Path) -> Iterator[str]:
    process = orders_factory("serve", relay_enabled="false", database_url=f"sqlite:///{tmp_path}/orders.db",
                             kafka_broker="kafka://127.0.0.1:1")
    process.start().wait_ready()
    yield process.url


def stats(url: str) -> dict:
    status, body = request(f"{url}/outbox/stats", "GET", content_type=None)
    assert status == 200, body
    return json.loads(body)


def nothing_written(url: str) -> None:
    s = stats(url)
    assert (s["pending"], s["sent"], s["failed"]) == (0, 0, 0), s


def test_a_1_mib_body_is_refused_with_413_and_nothing_written(orders: str) -> None:
    body = json.dumps(VALID).encode()
    body = body[:-1] + b" " * (1024 * 1024 - len(body)) + b"}"  # valid JSON, exactly 1 MiB
    assert len(body) == 1024 * 1024
    status, answer = request(f"{orders}/orders", body=body)
    assert status in (413, 0), (status, answer[:300])  # 413, or the connection closed on the excess
    nothing_written(orders)


def test_an_order_of_1000_skus_is_refused_with_422_and_nothing_written(orders: str) -> None:
    body = json.dumps({**VALID, "items": [{"sku": f"s-{i}", "qty": 1} for i in range(1000)]}).encode()
    assert 20_000 < len(body) < 64 * 1024  # under the body limit: the item bound refuses it
    status, answer = request(f"{orders}/orders", body=body)
    assert status == 422, (status, answer[:300])
    assert len(answer) < 4096
    nothing_written(orders)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None],
                         ids=["text", "form", "none"])
def test_a_body_not_sent_as_json_is_refused_with_415(orders: str, content_type: str | None) -> None:
    status, answer = request(f"{orders}/orders", body=json.dumps(VALID).encode(), content_type=content_type)
    assert status == 415, (status, answer[:300])
    nothing_written(orders)


OUT_OF_BOUNDS = {
    "qty-huge": {"items": [{"sku": "s-1", "qty": 10**12}]},
    "qty-zero": {"items": [{"sku": "s-1", "qty": 0}]},
    "qty-negative": {"items": [{"sku": "s-1", "qty": -5}]},
    "amount-huge": {"amount": "1e30"},
    "amount-negative": {"amount": "-1"},
    "amount-nan": {"amount": "NaN"},
    "amount-infinity": {"amount": "Infinity"},
    "amount-precision": {"amount": "0.000001"},
    "user-10000-chars": {"user_id": "u" * 10_000},
    "user-control-chars": {"user_id": "u-\x1b[31m\r\n"},
    "sku-control-chars": {"items": [{"sku": "s-\x00", "qty": 1}]},
    "sku-200-chars": {"items": [{"sku": "s" * 200, "qty": 1}]},
    "extra-field": {"admin": True},
    "items-not-a-list": {"items": "s-1"},
}


@pytest.mark.parametrize("change", list(OUT_OF_BOUNDS.values()), ids=list(OUT_OF_BOUNDS))
def test_values_out_of_bounds_are_refused_with_422_without_echoing_them(orders: str, change: dict) -> None:
    status, answer = request(f"{orders}/orders", body=json.dumps({**VALID, **change}).encode())
    assert status == 422, (status, answer[:300])
    assert b"u" * 1000 not in answer and b"\\u001b" not in answer and len(answer) < 4096, answer[:300]
    nothing_written(orders)


@pytest.mark.parametrize("order_id", ["o-%1b%5b31m", "o-%0d%0aX-Injected:%201", "o-" + "9" * 300, "%00"],
                         ids=["escape", "crlf", "300-chars", "nul"])
def test_path_order_ids_outside_the_safe_set_are_400(orders: str, order_id: str) -> None:
    for method, path in (("POST", f"/orders/{order_id}/pay"), ("POST", f"/orders/{order_id}/cancel"),
                         ("GET", f"/orders/{order_id}")):
        status, answer = request(orders + path, method, content_type=None)
        assert status == 400, (method, path[:40], status, answer[:200])


def test_an_event_larger_than_the_relay_may_send_is_refused_at_insert_time(orders_factory, tmp_path: Path) -> None:
    process = orders_factory("serve", name="small", relay_enabled="false", relay_max_request_bytes="4096",
                             database_url=f"sqlite:///{tmp_path}/small.db", kafka_broker="kafka://127.0.0.1:1")
    url = process.start().wait_ready().url
    items = [{"sku": f"s-{i:03d}-{'x' * 100}", "qty": 1} for i in range(100)]  # within every item bound
    status, answer = request(f"{url}/orders", body=json.dumps({**VALID, "items": items}).encode())
    assert status == 422, (status, answer[:300])
    assert b"RELAY_MAX_REQUEST_BYTES" in answer
    nothing_written(url)
