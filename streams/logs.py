"""Log lines of the project's processes: ``LOG_FORMAT`` (``text`` | ``json``) and ``LOG_LEVEL``.

``configure(fmt, level, service)`` sets up the root logger once per process;
``build_config`` returns the same as a :func:`logging.config.dictConfig` dict, for a
caller that wants to add to it. Standard library only.

* ``text``: ``[time] [pid] [LEVEL] logger: message key=value …``
* ``json``: one object per line — ``time`` (RFC 3339, UTC), ``level``, ``service``,
  ``logger``, ``message``, every field passed with ``extra=`` (``order_id``, ``topic``,
  ``partition``, ``offset``, ``event_type`` …) and ``exception`` when there is one.

    log.warning("row failed", extra={"order_id": "o-1", "topic": "events.order.paid.v1"})

Secrets never reach a log line through a library's echo (:class:`RedactSecrets`, on the
handler of every configuration built here): aiohttp logs a malformed request at ERROR
with the offending request or header line verbatim in the exception's message — an
``Authorization: Bearer …`` or the console's session cookie included. Rule: every
record of a logger under :data:`REDACTED_LOGGERS` is rendered (message and traceback)
and passed through :func:`redact` before any formatter sees it: the values of
``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie``, anything
after ``Bearer``/``Basic``, and every secret registered with :func:`add_secrets`
(the worker registers its settings' secrets at start-up) become ``***``.

The event loop's accept errors (out of file descriptors) are logged once a minute
with a count, not once per attempt (:class:`RateLimitAcceptErrors`).
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "service"}

#: Loggers of libraries that are chatty at INFO and say nothing an operator needs there.
QUIET_LOGGERS: Mapping[str, str] = {"aiokafka": "ERROR", "aiohttp.access": "WARNING"}


#: Loggers whose records are redacted (libraries that echo what a client sent).
REDACTED_LOGGERS = ("aiohttp", "faust.web")
#: Header names whose values are credentials.
_CREDENTIAL_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie)(\s*:\s*|\s*=\s*)"
    r"((?:(?!\\r|\\n|\\x0[0-9a-f])[^\r\n'\"])*)")
_SCHEME_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)[^\s'\"\\]+")
_SESSION = re.compile(r"(order_streams_session=)[^;\s'\"\\]*")
#: Secret values registered at start-up (the settings' secrets).
_SECRETS: set[str] = set()


def add_secrets(*values: str | None) -> None:
    """Values never to appear in a redacted record (e.g. ``WEB_TOKEN``, a password)."""
    for value in values:
        if value and len(value) >= 4:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with credential header values, ``Bearer``/``Basic`` credentials, the
    session cookie and every registered secret replaced by ``***``."""
    text = _CREDENTIAL_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _SCHEME_CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _SESSION.sub(r"\1***", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactSecrets(logging.Filter):
    """Renders and redacts records of :data:`REDACTED_LOGGERS` (see the module's docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(REDACTED_LOGGERS) and not _SECRETS:
            return True
        if not record.name.startswith(REDACTED_LOGGERS):
            message = record.getMessage()
            if any(secret in message for secret in _SECRETS):
                record.msg, record.args = redact(message), ()
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the template only
            message = str(record.msg)
        record.msg, record.args = redact(message), ()
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RateLimitAcceptErrors(logging.Filter):
    """The event loop's ``socket.accept() out of system resource`` (out of file
    descriptors: it retries every second, and logged every time — 83 MB in one flood):
    the first of each ``interval`` seconds passes, with how many were held back since."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, interval: float = 60.0, clock: Any = None) -> None:
        super().__init__()
        import time

        self.interval = interval
        self.clock = clock or time.monotonic
        self.last = float("-inf")
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self.MESSAGE):
            return True
        now = self.clock()
        if now - self.last < self.interval:
            self.held += 1
            return False
        if self.held:
            record.msg = f"{record.msg} ({self.held} more in the last {self.interval:g} s not logged)"
        self.last, self.held = now, 0
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values JSON cannot hold are written with ``str()``."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``[time] [pid] [LEVEL] logger: message`` followed by the ``extra=`` fields as ``key=value``."""

    def __init__(self, service: str = "") -> None:
        super().__init__("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        fields = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{head} {fields}{sep}{tail}"


def build_config(
    fmt: str = "text", level: str = "INFO", service: str = "", *,
    loggers: Mapping[str, str] = QUIET_LOGGERS,
) -> dict[str, Any]:
    """A ``dictConfig`` dict: one stderr handler on the root logger, in ``fmt``, at ``level``;
    ``loggers`` maps library logger names to their own (quieter) levels."""
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"{__name__}.{formatter.__name__}", "service": service}},
        "filters": {"redact": {"()": f"{__name__}.RedactSecrets"},
                    "accept_errors": {"()": f"{__name__}.RateLimitAcceptErrors"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr",
                       "filters": ["accept_errors", "redact"]},
        },
        "loggers": {name: {"level": lvl} for name, lvl in loggers.items()},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }


def configure(fmt: str = "text", level: str = "INFO", service: str = "") -> None:
    """Configure the root logger of this process (replaces its handlers)."""
    logging.config.dictConfig(build_config(fmt, level, service))
