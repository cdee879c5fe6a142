"""Prometheus collectors of the order service and its relay.

A process exports the outbox collectors only when it runs the relay (``relay=True``):
they are kept current by the relay's timer (``OUTBOX_STATS_INTERVAL``), so an API-only
process (``RELAY_ENABLED=false``) has none to go stale. The HTTP request counter
exists only where the API runs (``api=True``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class OrdersMetrics:
    def __init__(self, *, api: bool = True, relay: bool = True) -> None:
        r = self.registry = CollectorRegistry()
        self.has_outbox = relay
        if relay:
            self.pending = Gauge("outbox_pending_rows", "Outbox rows not yet published", registry=r)
            self.oldest_age = Gauge(
                "outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row", registry=r
            )
            self.failed_rows = Gauge(
                "outbox_failed_rows",
                "Outbox rows the relay gave up on (status failed: too large, invalid topic, unencodable)",
                registry=r,
            )
            self.published = Counter("outbox_published", "Outbox rows published (broker ack)", registry=r)
            self.failed = Counter(
                "outbox_publish_failures", "Outbox publish attempts that failed (retried later or given up)",
                registry=r,
            )
        if api:
            self.requests = Counter(
                "orders_http_requests", "Order API requests", ["route", "status"], registry=r
            )

    def set_outbox(self, pending: int, oldest_age: float, failed: int) -> None:
        """Set the outbox gauges (no-op in a process that does not run the relay)."""
        if self.has_outbox:
            self.pending.set(pending)
            self.oldest_age.set(oldest_age)
            self.failed_rows.set(failed)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
