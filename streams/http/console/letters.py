"""Rendering dead letters: someone else's bytes, shown and never interpreted.

A value is pretty-printed when it is JSON, shown as text (control and bidi
characters made visible) and as hex when it is other UTF-8, and as hex when it is
not UTF-8 — every character escaped. Headers likewise, one per line, repeats kept.
"""

from __future__ import annotations

import json
from typing import Any

from streams.engine import headers as H
from streams.http.console.html import badge, e, hidden, multiline, table, text, when
from streams.ops.dlq import MAX_TIME_DIGITS, DeadLetter
from streams.ops.text import utf8_or_none

#: Bytes of a value shown as a hex dump (the rest is counted, and downloadable).
HEX_BYTES = 4096
#: Characters of text or JSON shown.
TEXT_CHARS = 256 * 1024
#: Values larger than this are not parsed as JSON (shown as text).
JSON_MAX_BYTES = 1024 * 1024
#: JSON nested deeper than this is shown as text, with a note (parsing and printing
#: recurse: a value nested 1,000+ deep raised RecursionError, a 500).
JSON_MAX_DEPTH = 64
TIME_HEADERS = (H.FIRST_FAILED_AT, H.FAILED_AT, H.NOT_BEFORE)


def hex_dump(raw: bytes, limit: int = HEX_BYTES) -> str:
    """``offset  hex bytes  |ascii|`` lines, escaped; at most ``limit`` bytes."""
    lines = []
    for at in range(0, min(len(raw), limit), 16):
        chunk = raw[at:at + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{at:08x}  {hexes:<47}  |{ascii_}|")
    if len(raw) > limit:
        lines.append(f"… {len(raw) - limit:,} more bytes")
    return e("\n".join(lines))


def bytes_inline(raw: bytes | None, limit: int = 80) -> str:
    """Short bytes (a key, a header value) for a table cell: text, or ``hex:…``."""
    if raw is None:
        return '<span class="muted">null</span>'
    s = utf8_or_none(raw)
    if s is None:
        shown = raw[: limit // 2].hex()
        return f'<span class="mono hex">hex:{e(shown)}{"…" if len(raw) > limit // 2 else ""}</span>'
    return f'<span class="mono">{text(s[:limit])}{"…" if len(s) > limit else ""}</span>'


def json_depth(text: str, limit: int) -> int:
    """How deep ``text``'s brackets nest (outside strings), counted without recursion;
    stops counting past ``limit`` (returns ``limit + 1``)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def value_view(raw: bytes | None, whole_size: int | None = None) -> str:
    """The value of a letter: ``<pre class="value json|text|hex">``, escaped.
    ``whole_size``: ``raw`` is only the first bytes of a value of that size (a preview:
    shown as text or hex, never parsed as JSON)."""
    if raw is None:
        return '<p class="empty">no value (null)</p>'
    if not raw:
        return '<p class="empty">empty value (0 bytes)</p>'
    preview = whole_size is not None and whole_size > len(raw)
    size = (f'<p class="muted">{whole_size:,} bytes; the first {len(raw):,} are shown (download the value '
            'for all of it)</p>' if preview else f'<p class="muted">{len(raw):,} bytes</p>')
    s = utf8_or_none(raw)
    for drop in (1, 2, 3):  # a preview may end inside a character
        if s is not None or not preview:
            break
        s = utf8_or_none(raw[:-drop])
    note = ""
    if preview:
        pass  # the start of a value: never parsed as JSON
    elif s is not None and len(raw) <= JSON_MAX_BYTES and json_depth(s, JSON_MAX_DEPTH) > JSON_MAX_DEPTH:
        note = (f'<p class="notice warn">Nested more than {JSON_MAX_DEPTH} levels deep: shown as text, '
                'not parsed.</p>')
    elif s is not None and len(raw) <= JSON_MAX_BYTES:
        try:
            parsed = json.loads(s)
        except (ValueError, RecursionError):
            pass
        else:
            pretty = json.dumps(parsed, indent=2, ensure_ascii=False)
            cut = "\n…" if len(pretty) > TEXT_CHARS else ""
            return f'{size}<h3>JSON</h3><pre class="value json">{multiline(pretty[:TEXT_CHARS])}{cut}</pre>'
    if s is not None:
        cut = "\n…" if len(s) > TEXT_CHARS else ""
        heading = "Text (its first bytes)" if preview else "Text (not JSON)"
        return (f'{size}{note}<h3>{heading}</h3><pre class="value text">{multiline(s[:TEXT_CHARS])}{cut}</pre>'
                f'<h3>Hex</h3><pre class="value hex">{hex_dump(raw)}</pre>')
    return f'{size}<h3>Hex (not UTF-8)</h3><pre class="value hex">{hex_dump(raw)}</pre>'


def headers_view(letter: DeadLetter) -> str:
    items = letter.header_items or tuple(letter.headers.items())
    rows = []
    for name, raw in items:
        cell = bytes_inline(raw, limit=2000)
        if name in TIME_HEADERS and raw and raw.isdigit() and len(raw) <= MAX_TIME_DIGITS:
            cell += f' <span class="muted">{e(when(int(raw)))}</span>'
        rows.append([f'<span class="mono">{text(name)}</span>', cell])
    return table(["header", "value"], rows, empty="no headers", cls="headers")


def failed_when(letter: DeadLetter) -> str:
    """``x-failed-at`` as a time; forged (not a number, out of range) as given."""
    raw = letter.headers.get(H.FAILED_AT)
    if raw and not (raw.isdigit() and len(raw) <= MAX_TIME_DIGITS):
        return letter.failed_at()
    return when(letter.failed_at_ms)


def summary_cells(letter: DeadLetter, redriven: bool) -> list[str]:
    error = H.text(letter.headers, H.ERROR_MESSAGE)
    link = f'<a class="mono letter-link" href="/console/dlq/letters/{e(letter.id)}">{e(letter.id)}</a>'
    return [
        link + (" " + badge("already redriven", "ok") if redriven else ""),
        f'<span class="reason">{text(letter.reason)}</span>',
        text(letter.attempt),
        e(failed_when(letter)),
        f'<span class="mono">{text(letter.source())}</span>',
        bytes_inline(letter.key, 40),
        text(error[:100]) + ("…" if len(error) > 100 else ""),
    ]


SUMMARY_HEADERS = ["dead letter", "reason", "attempt", "failed at", "source", "key", "error"]


def letter_view(letter: DeadLetter, *, redriven: bool, csrf: str | None) -> str:
    """A letter's page body. ``csrf`` None: read-only (no redrive form)."""
    h = letter.headers
    facts = (
        '<dl class="kv">'
        f'<dt>Service</dt><dd>{e(letter.service)}</dd>'
        f'<dt>Reason</dt><dd class="reason">{text(letter.reason)}</dd>'
        f'<dt>Attempts</dt><dd>{text(letter.attempt)}</dd>'
        f'<dt>Failed at</dt><dd>{e(failed_when(letter))}</dd>'
        f'<dt>Source</dt><dd class="mono">{text(letter.source())}</dd>'
        f'<dt>Error</dt><dd>{text(H.text(h, H.ERROR_TYPE))}: {text(H.text(h, H.ERROR_MESSAGE))}</dd>'
        f'<dt>Key</dt><dd>{bytes_inline(letter.key, 400)}</dd>'
        f'<dt>Ledger</dt><dd>{badge("already redriven", "ok") if redriven else "not redriven"}</dd></dl>'
    )
    action = ""
    if csrf is not None and not redriven:
        action = (
            '<form method="post" action="/console/dlq/redrive" class="actions">'
            f'{hidden("csrf", csrf)}{hidden("mode", "selection")}{hidden("id", letter.id)}{hidden("dry_run", "1")}'
            '<button type="submit" class="preview-redrive">Preview redrive of this letter</button></form>')
    return (
        f'<div class="card">{facts}{action}'
        f'<p><a href="/console/dlq/letters/{e(letter.id)}/value" download>Download the value\'s raw bytes</a></p></div>'
        f'<h2>Headers</h2>{headers_view(letter)}'
        f'<h2>Value</h2><div class="card">{value_view(letter.value, letter.value_size)}</div>'
    )


def outcome_row(outcome: dict[str, Any]) -> list[str]:
    kind = {"redriven": "ok", "would_redrive": "", "already_redriven": "ok", "refused": "bad"}.get(outcome["action"], "")
    return [f'<a class="mono" href="/console/dlq/letters/{e(outcome["id"])}">{e(outcome["id"])}</a>',
            badge(outcome["action"].replace("_", " "), kind), e(outcome.get("target") or ""), text(outcome.get("why") or "")]
