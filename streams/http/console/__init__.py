"""The operator console: server-rendered pages under ``/console`` on every worker's
web server — the overview, orders, stock, dead letters and redrive (issue 14).

One concept per module: :mod:`~streams.http.console.html` (escaping, layout),
:mod:`~streams.http.console.auth` (sign-in, CSRF, read-only), :mod:`~streams.http.console.overview`,
:mod:`~streams.http.console.state` (orders, stock), :mod:`~streams.http.console.letters`
(showing a dead letter), :mod:`~streams.http.console.dlq_page` (paging through DLQs),
:mod:`~streams.http.console.redrive` (redrive jobs), :mod:`~streams.http.console.views` (routes).

The console is built on :mod:`streams.http` (sessions, table lookups) and never the other
way round; the composition root adds its routes after the worker's own
(:func:`register_console`, called after :func:`streams.http.web.register_web`).
"""

from __future__ import annotations

from streams.http.console.views import register_console

__all__ = ["register_console"]
