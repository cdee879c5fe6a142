"""HTML building blocks of the console: escaping, the page layout, small widgets.

Rule of the package: every value that is not a literal of this package goes
through :func:`e` (``html.escape`` with quotes) — record bytes, headers, keys,
order ids, error messages, query parameters. Text that came from a record goes
through :func:`text` first, which also makes control and bidi characters visible
(``\\x1b``, ``\\u202e``) so a letter can neither inject markup nor disguise itself.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from streams.ops.text import printable

ASSETS = "/console/login/assets"  # under the sign-in prefix: the form needs them before the token


def e(value: Any) -> str:
    """Escaped for HTML text and attribute values (``"`` and ``'`` included)."""
    return html.escape("" if value is None else str(value), quote=True)


def text(value: str) -> str:
    """Someone else's text, for HTML: non-printable characters made visible, then escaped."""
    return e(printable(value))


def multiline(value: str) -> str:
    """Like :func:`text`, keeping line breaks (for ``<pre>``)."""
    return "\n".join(e(printable(line)) for line in value.split("\n"))


def url(path: str, **query: Any) -> str:
    """``path?query`` with empty values left out (escape the result with :func:`e` in markup)."""
    q = {k: v for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urlencode(q) if q else "")


def when(ms: int | None) -> str:
    """Epoch milliseconds as ``2024-05-01 12:00:00.123Z`` (empty for None)."""
    if ms is None:
        return ""
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, OSError, ValueError):
        return str(ms)


def number(n: float | int | None, digits: int = 0) -> str:
    if n is None:
        return "–"
    return f"{n:,.{digits}f}"


def badge(label: str, kind: str = "") -> str:
    return f'<span class="badge {e(kind)}">{e(label)}</span>'


def table(headers: list[str], rows: list[list[str]], *, empty: str = "nothing", cls: str = "") -> str:
    """A table of already-escaped cells."""
    if not rows:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def hidden(name: str, value: Any) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}">'


NAV = (("Overview", "/console"), ("Dead letters", "/console/dlq"))


def page(title: str, body: str, *, signed_in: bool = False, csrf: str = "", read_only: bool = False,
         active: str = "", bare: bool = False) -> str:
    """A whole page: header with navigation and look-up forms (``bare``: none, for the
    sign-in form), then ``body`` (escaped already)."""
    nav = "".join(f'<a href="{e(href)}"{" class=active" if href == active else ""}>{e(label)}</a>'
                  for label, href in NAV)
    lookups = (
        '<form class="lookup" method="get" action="/console/orders">'
        '<input name="id" placeholder="order id" aria-label="order id" required>'
        '<button type="submit">Find order</button></form>'
        '<form class="lookup" method="get" action="/console/inventory">'
        '<input name="sku" placeholder="SKU" aria-label="SKU" required>'
        '<button type="submit">Stock</button></form>'
    )
    if read_only:
        who = badge("read-only: WEB_TOKEN not set", "warn")
    elif signed_in:
        who = ('<form class="inline" method="post" action="/console/logout">' + hidden("csrf", csrf)
               + '<button type="submit" class="link">Sign out</button></form>')
    else:
        who = ""
    if bare:
        nav = lookups = who = ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · order-streams console</title>"
        f'<link rel="stylesheet" href="{ASSETS}/console.css">'
        f'<link rel="icon" href="data:,"><script src="{ASSETS}/console.js" defer></script></head><body>'
        f'<header><a class="brand" href="/console">order-streams</a><nav>{nav}</nav>{lookups}'
        f'<div class="who">{who}</div></header>'
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>"
    )
