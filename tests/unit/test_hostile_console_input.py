"""No 500 and no traceback for hostile input to the console and the CLI (issue 23,
item 6): a letter value nested 1,000+ deep, a forged ``x-failed-at`` of 5,000 digits or
in the year 3,170,843, a non-UTF-8 ``Authorization`` or ``Cookie``, ``since=`` with 400
digits. (The property-based run over a real worker's routes is in
tests/integration/test_worker_web_server.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web as aioweb
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from streams.ops import dlq
from streams.http.console import auth, dlq_page, letters
from streams.ops.dlq import DeadLetter
from streams.http.web import auth_middleware, host_middleware

TOKEN = "hostile-console-input-token-0123456789"
#: epoch ms of a day in the year 3,170,843 (no datetime holds it)
YEAR_3170843_MS = str(int((3_170_843 - 1970) * 365.2425 * 86400 * 1000)).encode()


def letter(value: bytes = b"{}", failed_at: bytes | None = b"1700000000000") -> DeadLetter:
    items = [("x-dlq-reason", b"max_attempts"), ("x-attempt", b"3"), ("x-source-topic", b"events.order.paid.v1")]
    if failed_at is not None:
        items += [("x-failed-at", failed_at), ("x-first-failed-at", failed_at)]
    return DeadLetter("notifications", 0, 5, b"o-1", value, dict(items), 1_700_000_000_000, tuple(items))


@pytest.mark.parametrize("depth", [1_000, 5_000, 100_000])
def test_a_value_nested_deeper_than_the_recursion_limit_is_shown_as_text_with_a_note(depth):
    for raw in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        shown = letters.value_view(raw)
        assert "Nested more than" in shown and 'class="value text"' in shown
        page = letters.letter_view(letter(raw), redriven=False, csrf=None)
        assert "Nested more than" in page


def test_json_nested_within_the_limit_is_still_pretty_printed():
    raw = json.dumps({"a": [[[{"b": "]]]\"{{"}]]]}).encode()  # brackets inside strings do not count
    assert letters.json_depth(raw.decode(), 64) == 5
    assert 'class="value json"' in letters.value_view(raw)


@pytest.mark.parametrize("forged", [b"9" * 5000, b"9" * 4000, YEAR_3170843_MS, b"-5", b"12e400", b"\xff" * 10])
def test_a_forged_failed_at_is_shown_as_given_in_ls_show_and_the_console(forged):
    d = letter(failed_at=forged)
    summary = d.summary()  # dlq ls --json
    json.dumps(summary)
    row = d.row()  # dlq ls
    full = d.to_dict()  # dlq show --json
    json.dumps(full)
    cells = letters.summary_cells(d, False)  # the console's DLQ page
    page = letters.letter_view(d, redriven=False, csrf=None)  # the letter's page
    given = forged[:40].decode("utf-8", "replace")
    if forged.isdigit():
        for shown in (summary["failed_at"], row[3]):
            assert shown.startswith(given), shown
        assert given in cells[3] and given in page
    # A forged time never decides what `since` sees beyond the record's own timestamp.
    assert d.failed_at_ms in (int(forged), d.timestamp_ms) if forged.isdigit() and len(forged) < 19 \
        else d.failed_at_ms == d.timestamp_ms


@pytest.mark.parametrize("since", ["9" * 400 + "d", "9" * 400, "9" * 20 + "s", "1" * 12 + "d",
                                   "99999-01-01", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
                                   "٣d", "1e400d", "\x00"])
def test_since_out_of_range_is_a_usage_error_not_a_crash(since):
    """Whatever ``since`` says, the console gets a filter or a BadQuery (a 400), never
    OverflowError (a 500)."""
    try:
        f = dlq_page.parse_filter({"since": since})
    except dlq_page.BadQuery:
        return
    assert isinstance(f.since_ms, int)


def test_a_400_digit_since_is_refused():
    with pytest.raises(ValueError):
        dlq.parse_since("9" * 400 + "d")
    with pytest.raises(dlq_page.BadQuery):
        dlq_page.parse_filter({"since": "9" * 400 + "d"})


@pytest.mark.parametrize("value", ["²", "9" * 5000, "1" * 400, "-1", "0"])
def test_limits_and_ids_of_odd_digits_are_refused(value):
    with pytest.raises(dlq_page.BadQuery):
        dlq_page.parse_limit(value)
    with pytest.raises(ValueError):
        dlq.parse_id(f"notifications.dlq:{value}:1" if value != "0" else "notifications.dlq:²:1")


def raw_header_request(name: str, value: bytes, path: str = "/console/dlq") -> Any:
    """A request whose header carries ``value`` as aiohttp hands over non-UTF-8 bytes."""
    req = make_mocked_request("GET", path, headers=CIMultiDict({"Host": "127.0.0.1:6066"}))
    req._headers = CIMultiDictProxy(CIMultiDict({"Host": "127.0.0.1:6066",
                                                 name: value.decode("utf-8", "surrogateescape")}))
    return req


async def ok(request: Any) -> Any:
    return aioweb.Response(text="ok")


@pytest.mark.parametrize("name,value", [
    ("Authorization", b"Bearer \xff\xfe" + TOKEN.encode()), ("Authorization", b"\xc3"),
    ("Cookie", b"order_streams_session=\xff"), ("Cookie", b"a=\xed\xa0\x80"),
])
async def test_a_non_utf8_authorization_or_cookie_is_400(name, value):
    for middleware in (auth_middleware(TOKEN), host_middleware(frozenset({"127.0.0.1"})),
                       auth.console_middleware(TOKEN), auth.console_middleware("")):
        response = await middleware(raw_header_request(name, value), ok)
        assert response.status == 400 and "not UTF-8" in response.text, middleware
