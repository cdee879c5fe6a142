"""``python -m orders serve`` (HTTP API + outbox relay) and ``python -m orders relay``.

Whichever process runs the relay serves its metrics: ``serve`` on ``ORDERS_PORT``
together with the API, ``relay`` on its own ``RELAY_PORT`` (``/metrics``, ``/health``).
A port that is taken ends the process with one line naming the setting, exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import sys

from aiohttp import web

from orders.api import OrdersApi
from orders.db import open_database
from orders.metrics import OrdersMetrics
from orders.relay import Relay, relay_app
from orders.settings import OrdersSettings, load_orders_settings
from streams import logs
from streams.kafka_connection import KafkaAccessError

log = logging.getLogger("orders")


class CannotListen(Exception):
    """The HTTP port could not be bound; ``str()`` is the one line to print."""


async def _listen(runner: web.AppRunner, host: str, port: int, setting: str) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(f"orders: port {port} is in use (set {setting})") from None
        raise CannotListen(
            f"orders: cannot listen on {host}:{port}: {exc.strerror or exc} (set ORDERS_HOST, {setting})"
        ) from None


async def serve(settings: OrdersSettings, *, with_api: bool, with_relay: bool) -> None:
    db = open_database(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    metrics = OrdersMetrics(api=with_api, relay=with_relay)
    relay = Relay(db, settings, metrics)
    runner: web.AppRunner | None = None
    relay_task: asyncio.Future[None] | None = None
    if with_relay:  # credentials the broker refuses end the process (KafkaAccessError), never retried
        await settings.check_access(settings.bootstrap)
    try:
        await db.setup()
        if with_api:
            api = OrdersApi(db, metrics, on_commit=relay.notify if with_relay else (lambda: None),
                            max_body_bytes=settings.orders_max_body_bytes,
                            max_event_bytes=settings.relay_max_request_bytes,
                            idempotency_ttl=settings.idempotency_ttl,
                            order_events_version=settings.order_events_version,
                            currency=settings.default_currency)
            runner = web.AppRunner(api.app(), access_log=None)
            await runner.setup()
            await _listen(runner, settings.orders_host, settings.orders_port, "ORDERS_PORT")
            log.info("order API ready on http://%s:%d (relay %s)", settings.orders_host, settings.orders_port,
                     "in this process" if with_relay else "off: RELAY_ENABLED=false")
        elif with_relay:
            runner = web.AppRunner(relay_app(relay), access_log=None)
            await runner.setup()
            await _listen(runner, settings.orders_host, settings.relay_port, "RELAY_PORT")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if with_relay:
            relay_task = asyncio.ensure_future(relay.run())
            where = "" if with_api else f"; /metrics on http://{settings.orders_host}:{settings.relay_port}"
            log.info("outbox relay %s ready on %s%s", settings.relay_id, settings.database_url.split("@")[-1], where)
        waits = [asyncio.ensure_future(stop.wait())] + ([relay_task] if relay_task else [])
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if relay_task and relay_task.done():
            relay_task.result()  # surface a crashed relay
    finally:
        if relay_task:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
        if runner:
            await runner.cleanup()
        await db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orders")
    parser.add_argument("command", choices=["serve", "relay"])
    parser.add_argument("-l", "--loglevel", default=None, help="overrides LOG_LEVEL")
    args = parser.parse_args(argv)
    settings = load_orders_settings()
    service = "orders" if args.command == "serve" else "orders-relay"
    level = (args.loglevel or settings.log_level).upper()
    if not isinstance(logging.getLevelName(level), int):
        parser.error(f"unknown log level {args.loglevel!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    logs.configure(settings.log_format, level, service)
    with_relay = args.command == "relay" or settings.relay_enabled
    try:
        asyncio.run(serve(settings, with_api=args.command == "serve", with_relay=with_relay))
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        return 1
    except KafkaAccessError as exc:
        print(f"orders: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
