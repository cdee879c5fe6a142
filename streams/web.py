"""Worker HTTP routes: ``/metrics``, ``/health``, ``/orders/{order_id}``."""

from __future__ import annotations

from typing import Any

from streams.metrics import Metrics
from tables.order_state import public_view


def register_web(app: Any, metrics: Metrics, order_table: Any | None, stock_table: Any | None) -> None:
    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        recovered = app.tables.recovery.completed.is_set()
        ready = recovered and not app.rebalancing
        body = {
            "status": "ok" if ready else "starting",
            "recovered": recovered,
            "rebalancing": bool(app.rebalancing),
            "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives()),
        }
        return web.json(body, status=200 if ready else 503)

    if order_table is not None:
        _order_route(app, order_table)
    if stock_table is not None:
        _stock_route(app, stock_table)


def _order_route(app: Any, order_table: Any) -> None:
    @app.page("/orders/{order_id}")
    @app.table_route(table=order_table, match_info="order_id")
    async def get_order(web: Any, request: Any, order_id: str) -> Any:
        state = order_table.get(order_id)
        if state is None:
            return web.json({"error": "unknown order", "order_id": order_id}, status=404)
        return web.json(public_view(state))


def _stock_route(app: Any, stock_table: Any) -> None:
    @app.page("/inventory/{sku}")
    @app.table_route(table=stock_table, match_info="sku")
    async def get_stock(web: Any, request: Any, sku: str) -> Any:
        stock = stock_table.get(sku)
        if stock is None:
            return web.json({"error": "unknown sku", "sku": sku}, status=404)
        held = sum(d["qty"] for d in stock["decisions"].values() if d["decision"] == "reserved")
        return web.json({"sku": sku, "available": stock["available"], "reserved": held,
                         "orders": len(stock["decisions"])})
