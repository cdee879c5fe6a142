"""The operator console: server-rendered pages under ``/console`` on every worker's
web server — the overview, orders, stock, dead letters and redrive (issue 14).

One concept per module: :mod:`~streams.console.html` (escaping, layout),
:mod:`~streams.console.auth` (sign-in, CSRF, read-only), :mod:`~streams.console.overview`,
:mod:`~streams.console.state` (orders, stock), :mod:`~streams.console.letters`
(showing a dead letter), :mod:`~streams.console.dlq_page` (paging through DLQs),
:mod:`~streams.console.redrive` (redrive jobs), :mod:`~streams.console.views` (routes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.wiring import Worker

__all__ = ["register_console"]


def register_console(app: Any, worker: "Worker") -> None:
    """Add the console's routes and middleware to the worker's Faust app (call it
    after the worker's own routes and auth middleware are set up)."""
    from streams.console.views import register_console as register

    register(app, worker)
