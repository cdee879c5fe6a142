"""The console's rendering without a broker: every value from a record is escaped,
a letter's value is shown as JSON, text or hex and never interpreted, and a read-only
console renders no redrive control."""

from __future__ import annotations

import re

from streams.http.console import dlq_page, html, letters, state
from streams.http.console.dlq_page import Filter, Found
from streams.ops.dlq import DeadLetter

SCRIPT = b"<script>alert(1)</script>"
HOSTILE = "\x1b]0;pwned\x07\u202eevil"


def letter(value: bytes | None = b"{}", *, key: bytes | None = b"o-1", headers: list[tuple[str, bytes]] | None = None,
           service: str = "notifications", offset: int = 7) -> DeadLetter:
    items = tuple(headers if headers is not None else [
        ("x-dlq-reason", b"max_attempts"), ("x-attempt", b"2"), ("x-source-topic", b"events.order.paid.v1"),
        ("x-failed-at", b"1700000000000")])
    return DeadLetter(service, 0, offset, key, value, dict(items), 1_700_000_000_000, items)


def no_markup_from(data: str, page: str) -> None:
    """``data`` (which contains markup) does not appear unescaped in ``page``."""
    assert data not in page


def test_escape_covers_markup_and_both_quotes():
    assert html.e('<a href="x" onclick=\'y\'>&') == "&lt;a href=&quot;x&quot; onclick=&#x27;y&#x27;&gt;&amp;"
    assert html.e(None) == ""


def test_text_makes_control_and_bidi_characters_visible_then_escapes():
    shown = html.text(HOSTILE + "<b>")
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown
    assert "\\x1b" in shown and "\\u202e" in shown and "&lt;b&gt;" in shown


def test_json_value_is_pretty_printed_and_escaped():
    out = letters.value_view(b'{"order_id": "o-1", "note": "<script>alert(1)</script>", "n": [1, 2]}')
    assert 'class="value json"' in out
    assert '\n  &quot;order_id&quot;: &quot;o-1&quot;,\n' in out  # indented, one key a line
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    no_markup_from("<script>", out)


def test_script_value_is_text_and_hex_never_markup():
    out = letters.value_view(SCRIPT)
    assert 'class="value text"' in out and 'class="value hex"' in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "3c 73 63 72 69 70 74 3e" in out  # "<script>" in the hex dump
    assert "|&lt;script&gt;alert(1)|" in out  # the dump's ASCII column is escaped too
    no_markup_from("<script", out)


def test_non_utf8_value_is_shown_as_hex():
    raw = b"\xff\xfe\x00<b>bold</b>\x1b"
    out = letters.value_view(raw)
    assert 'class="value hex"' in out and 'class="value text"' not in out
    assert "ff fe 00 3c 62 3e" in out
    assert "|...&lt;b&gt;bold&lt;/b&gt;.|" in out
    no_markup_from("<b>", out)
    assert "\x1b" not in out


def test_text_value_keeps_lines_and_shows_control_characters():
    out = letters.value_view("line one\nline\x1b two\u202e".encode())
    assert "line one\nline\\x1b two\\u202e" in out


def test_hex_dump_is_bounded():
    out = letters.value_view(b"\xff" * 100_000)
    assert out.count("\n") < letters.HEX_BYTES // 16 + 5
    assert f"{100_000 - letters.HEX_BYTES:,} more bytes" in out


def test_null_and_empty_values():
    assert "null" in letters.value_view(None)
    assert "0 bytes" in letters.value_view(b"")


def test_headers_and_key_are_escaped_and_non_utf8_as_hex():
    d = letter(SCRIPT, key=b"\xff<k>", headers=[("x-dlq-reason", b"<i>reason</i>"), ("<h>", b"\xfe\xff<v>"),
                                                 ("x-error-message", HOSTILE.encode())])
    page = letters.letter_view(d, redriven=False, csrf=None)
    for raw in ("<i>", "<h>", "<v>", "<k>", "<script"):
        no_markup_from(raw, page)
    assert "&lt;h&gt;" in page and "hex:feff3c763e" in page and "hex:ff3c6b3e" in page
    assert "&lt;i&gt;reason&lt;/i&gt;" in page
    assert "\x1b" not in page and "\u202e" not in page


def test_letter_page_has_a_redrive_form_only_when_it_may_write():
    d = letter()
    read_only = letters.letter_view(d, redriven=False, csrf=None)
    assert "/console/dlq/redrive" not in read_only and "csrf" not in read_only
    writable = letters.letter_view(d, redriven=False, csrf="c0ffee")
    assert 'action="/console/dlq/redrive"' in writable and 'name="csrf" value="c0ffee"' in writable
    done = letters.letter_view(d, redriven=True, csrf="c0ffee")
    assert "already redriven" in done and 'action="/console/dlq/redrive"' not in done


def test_dlq_listing_read_only_has_no_redrive_controls():
    found = Found([letter(SCRIPT, key=b"<k>"), letter(offset=8)])
    page = dlq_page.render(Filter(), found, 2, set(), after=None, limit=50, csrf=None)
    assert "redrive" not in page.lower() and 'type="checkbox"' not in page
    no_markup_from("<k>", page)


def test_dlq_listing_marks_the_ledgers_letters_and_offers_no_checkbox_for_them():
    a, b = letter(offset=1), letter(offset=2)
    page = dlq_page.render(Filter(reason="max_attempts"), Found([a, b], next_cursor=b.id), 2, {a.id}, after=None,
                           limit=50, csrf="c0ffee")
    assert page.count("already redriven") == 1
    assert f'value="{b.id}"' in page and f'name="id" value="{a.id}"' not in page
    assert 'name="csrf" value="c0ffee"' in page
    assert re.search(r'class="next-page" href="/console/dlq\?reason=max_attempts&amp;after=notifications\.dlq%3A0%3A2"',
                     page)


def test_filter_values_are_escaped_in_the_form():
    page = dlq_page.filter_form(Filter(since='"><script>x</script>', key="k"))
    no_markup_from("<script>", page)
    assert 'value="&quot;&gt;&lt;script&gt;x&lt;/script&gt;"' in page


def test_order_timeline_escapes_what_the_state_holds():
    view = {"order_id": "o-1", "status": "PAID", "reservation": "PENDING", "version": 2,
            "history": [{"type": "OrderCreated", "event_id": "e<1>", "occurred_at": "2024-05-01T10:00:00Z",
                         "topic": "events.order.created.v1", "partition": 1, "offset": 41, "timestamp_ms": 1},
                        {"type": "<img src=x onerror=alert(1)>", "event_id": None, "occurred_at": None,
                         "topic": "t", "partition": 0, "offset": 3, "timestamp_ms": 1_700_000_000_000}],
            "parked": [{"type": "NotificationSent", "event_id": "e-2", "parked_at_ms": 1_700_000_000_000}]}
    page = state.render_order(view)
    no_markup_from("<img", page)
    no_markup_from("e<1>", page)
    assert page.count('<li class="event">') == 2 and page.count('<li class="parked">') == 1
    assert "2024-05-01T10:00:00Z" in page and "2023-11-14 22:13:20.000Z" in page
    assert 'href="/console/dlq?key=o-1"' in page
