"""The operator console: server-rendered pages under ``/console`` on every worker's
web server — the overview, orders, stock, dead letters and redrive (issue 14).

One concept per module: :mod:`~streams.http.console.html` (escaping, layout),
:mod:`~streams.http.console.auth` (sign-in, CSRF, read-only), :mod:`~streams.http.console.overview`,
:mod:`~streams.http.console.state` (orders, stock), :mod:`~streams.http.console.letters`
(showing a dead letter), :mod:`~streams.http.console.dlq_page` (paging through DLQs),
:mod:`~streams.http.console.redrive` (redrive jobs), :mod:`~streams.http.console.views` (routes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.worker import Worker

__all__ = ["register_console"]


def register_console(app: Any, worker: "Worker") -> None:
    """Add the console's routes and middleware to the worker's Faust app (call it
    after the worker's own routes and auth middleware are set up)."""
    from streams.http.console.views import register_console as register

    register(app, worker)
