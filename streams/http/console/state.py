"""Table views: an order's lifecycle and a SKU's stock, rendered from the same
values ``GET /orders/{id}`` and ``GET /inventory/{sku}`` return."""

from __future__ import annotations

from typing import Any

from streams.http.console.html import badge, e, text, url, when

STATUS_KIND = {"NOTIFIED": "ok", "PAID": "", "CREATED": "", "CANCELLED": "bad"}
RESERVATION_KIND = {"RESERVED": "ok", "REJECTED": "bad", "PENDING": "warn"}


def render_order(view: dict[str, Any]) -> str:
    """``view`` is :func:`tables.order_state.public_view` of the order."""
    order_id = str(view["order_id"])
    history = view.get("history") or []
    parked = view.get("parked") or []
    items = []
    for h in history:
        event_time = text(str(h["occurred_at"])) if h.get("occurred_at") else e(when(h.get("timestamp_ms")))
        items.append(
            f'<li class="event"><span class="type">{text(str(h.get("type")))}</span> '
            f'<span class="meta">event time <time>{event_time}</time> · '
            f'<span class="mono">{text(str(h.get("topic")))}</span> partition {e(h.get("partition"))} '
            f'offset <span class="offset">{e(h.get("offset"))}</span>'
            f'{" · id " + text(str(h["event_id"])) if h.get("event_id") else ""}</span></li>')
    for p in parked:
        items.append(
            f'<li class="parked"><span class="type">{text(str(p.get("type")))}</span> {badge("parked", "warn")} '
            f'<span class="meta">waiting for its predecessor since {e(when(p.get("parked_at_ms")))}'
            f'{" · id " + text(str(p["event_id"])) if p.get("event_id") else ""}</span></li>')
    timeline = f'<ol class="timeline">{"".join(items)}</ol>' if items else '<p class="empty">no events yet</p>'
    return (
        '<div class="card"><dl class="kv">'
        f'<dt>Order</dt><dd class="mono order-id">{e(order_id)}</dd>'
        f'<dt>Status</dt><dd class="order-status">{badge(view["status"], STATUS_KIND.get(view["status"], ""))}</dd>'
        f'<dt>Reservation</dt><dd class="order-reservation">'
        f'{badge(view["reservation"], RESERVATION_KIND.get(view["reservation"], ""))}</dd>'
        f'<dt>Version</dt><dd class="order-version">{e(view["version"])}</dd>'
        f'<dt>Parked events</dt><dd>{len(parked)}</dd></dl>'
        f'<p><a class="order-dead-letters" href="{e(url("/console/dlq", key=order_id))}">'
        'Dead letters of this order →</a></p></div>'
        f'<h2>History</h2><div class="card">{timeline}</div>'
    )


def render_stock(sku: str, stock: dict[str, Any]) -> str:
    return (
        '<div class="card"><dl class="kv">'
        f'<dt>SKU</dt><dd class="mono">{e(sku)}</dd>'
        f'<dt>Available</dt><dd class="big stock-available">{e(stock.get("available"))}</dd>'
        f'<dt>Reserved</dt><dd class="big stock-reserved">{e(stock.get("reserved"))}</dd></dl></div>'
    )
