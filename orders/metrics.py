"""Prometheus collectors of the order service and its relay."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class OrdersMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.pending = Gauge("outbox_pending_rows", "Outbox rows not yet published", registry=r)
        self.oldest_age = Gauge(
            "outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row", registry=r
        )
        self.published = Counter("outbox_published", "Outbox rows published (broker ack)", registry=r)
        self.failed = Counter(
            "outbox_publish_failures", "Outbox publish attempts that failed (retried later)", registry=r
        )
        self.requests = Counter(
            "orders_http_requests", "Order API requests", ["route", "status"], registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
