"""``python -m orders serve`` (HTTP API + outbox relay) and ``python -m orders relay``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from orders.api import OrdersApi
from orders.db import open_database
from orders.metrics import OrdersMetrics
from orders.relay import Relay
from orders.settings import OrdersSettings, load_orders_settings

log = logging.getLogger("orders")


async def serve(settings: OrdersSettings, *, with_api: bool, with_relay: bool) -> None:
    db = open_database(settings.database_url)
    await db.setup()
    metrics = OrdersMetrics()
    relay = Relay(db, settings, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = None
    relay_task = asyncio.ensure_future(relay.run()) if with_relay else None
    try:
        if with_api:
            api = OrdersApi(db, metrics, on_commit=relay.notify if with_relay else (lambda: None))
            runner = web.AppRunner(api.app(), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.orders_host, settings.orders_port).start()
            log.info("order service on http://%s:%d (relay %s)", settings.orders_host,
                     settings.orders_port, "on" if with_relay else "off")
        else:
            log.info("outbox relay %s on %s", settings.relay_id, settings.database_url.split("@")[-1])
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
    parser.add_argument("-l", "--loglevel", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    settings = load_orders_settings()
    with_relay = args.command == "relay" or settings.relay_enabled
    asyncio.run(serve(settings, with_api=args.command == "serve", with_relay=with_relay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
