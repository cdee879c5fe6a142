"""Someone else's text, made safe to show: on a terminal (the ``dlq`` and ``reconcile``
commands) and, escaped once more, in HTML (the console).

Rule: text that came from a record (keys, values, headers, reasons, error messages) is
shown through :func:`printable` — every control and other non-printable character
escaped — so a letter's escape sequences or bidi overrides never reach a terminal or a
page raw. Its own module, free of Kafka clients, so the console's HTML helpers
(:mod:`streams.http.console.html`) use it without importing the DLQ reader.
"""

from __future__ import annotations

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(text: str) -> str:
    """``text`` with every control and other non-printable character escaped
    (``\\x1b``, ``\\n``, ``\\u202e``, …; a backslash is doubled so the escapes are
    unambiguous). What is left is safe to print on a terminal."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            cp = ord(ch)
            out.append(f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}")
    return "".join(out)


def utf8_or_none(raw: bytes) -> str | None:
    """``raw`` decoded as UTF-8, None when it is not UTF-8 (then it is shown as hex)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
