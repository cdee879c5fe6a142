"""Prometheus collectors of the worker, on a registry of their own.

Counted per batch (one ``inc(n)`` per label set and batch), not per event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: (topic, partition, lag in records) for each partition this worker consumes.
LagSource = Callable[[], Iterable[tuple[str, int, int]]]


class ConsumerLag(Collector):
    """``consumer_lag{topic,partition}``: high watermark − next offset to read, at scrape."""

    def __init__(self) -> None:
        self.source: LagSource = lambda: ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "consumer_lag", "Records not yet read, per assigned partition", labels=["topic", "partition"]
        )
        for topic, partition, lag in self.source():
            family.add_metric([topic, str(partition)], lag)
        yield family

#: Statuses of ``event_processed_total``.
SUCCESS, DUPLICATE, RETRY, DEAD_LETTER = "success", "duplicate", "retry", "dead_letter"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.event_processed = Counter(
            "event_processed", "Events handled, by consuming service, event type and outcome",
            ["service", "type", "status"], registry=r,
        )
        self.event_latency = Histogram(
            "event_processing_latency_seconds",
            "From the record's timestamp to the end of its commit protocol",
            ["service"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.batch_seconds = Histogram(
            "batch_processing_seconds", "Time to run the commit protocol for one batch",
            ["service"], registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = Histogram(
            "batch_size_events", "Events per batch", ["service"], registry=r,
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
        )
        self.retry_scheduled = Counter(
            "retry_scheduled", "Events sent to a retry tier", ["service", "tier"], registry=r,
        )
        self.dead_letter = Counter(
            "dead_letter", "Events sent to the dead-letter topic", ["service", "reason"], registry=r,
        )
        self.oldest_retry_age = Gauge(
            "retry_oldest_waiting_age_seconds",
            "Age of the oldest retry record waiting for its x-not-before",
            ["service"], registry=r,
        )
        self.dedup_expired = Counter(
            "dedup_keys_expired", "Dedup keys removed by the TTL sweep (tombstoned)",
            ["table"], registry=r,
        )
        self.rpc_calls = Counter(
            "rpc_calls", "Best-effort calls by outcome (ok, error, timeout, refused)",
            ["target", "outcome"], registry=r,
        )
        self.fast_path_records = Counter(
            "fast_path_records", "Records processed on the batch fast path", ["topic"], registry=r,
        )
        self.consumer_lag = ConsumerLag()
        r.register(self.consumer_lag)
        self.publish_failures = Counter(
            "publish_failures", "Sends to the broker that failed and were retried",
            ["service"], registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
