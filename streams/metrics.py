"""Prometheus collectors of the worker, on a registry of their own; the engine's
:class:`~streams.engine.pipeline.Counts` port.

Counted per batch (one ``inc(n)`` per label set and batch), not per event.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from streams.engine.pipeline import DEAD_LETTER, DUPLICATE, PARKED, RETRY, SUCCESS

__all__ = ["Metrics", "SUCCESS", "DUPLICATE", "RETRY", "DEAD_LETTER", "PARKED"]


class _Source(Collector):
    """A gauge (or counter) family read from a callable at scrape time."""

    def __init__(self, name: str, doc: str, labels: list[str], *, counter: bool = False) -> None:
        self.name, self.doc, self.labels, self.counter = name, doc, labels, counter
        self.source: Callable[[], Iterable[tuple]] = lambda: ()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        kind = CounterMetricFamily if self.counter else GaugeMetricFamily
        family = kind(self.name, self.doc, labels=self.labels)
        for *labels, value in self.source():
            family.add_metric([str(v) for v in labels], value)
        yield family


class BatchHistogram(Collector):
    """A histogram observed a batch at a time: one bisect per value, no lock (the
    engine runs on one event loop), not ``prometheus_client``'s ``observe`` per event
    (its cost: docs/design-notes.md, "Hot-path costs")."""

    def __init__(self, name: str, doc: str, label: str, buckets: Sequence[float]) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.buckets = sorted(buckets)
        self._series: dict[str, list[float]] = {}  # label → counts per bucket (+Inf last), then sum

    def observe_many(self, label: str, values: Sequence[float]) -> None:
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = [0.0] * (len(self.buckets) + 2)
        buckets, total = self.buckets, 0.0
        for v in values:
            series[bisect_left(buckets, v)] += 1
            total += v
        series[-1] += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for label, series in self._series.items():
            running, out = 0.0, []
            for bound, count in zip([*self.buckets, float("inf")], series[:-1]):
                running += count
                out.append((str(bound) if bound != float("inf") else "+Inf", running))
            family.add_metric([label], out, series[-1])
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.event_processed = Counter(
            "event_processed", "Events handled, by consuming service, event type and outcome",
            ["service", "type", "status"], registry=r,
        )
        self.event_latency = BatchHistogram(
            "event_processing_latency_seconds",
            "From the record's timestamp to the end of its commit protocol", "service",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        r.register(self.event_latency)
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
        self.publish_failures = Counter(
            "publish_failures", "Sends to the broker that failed and were retried",
            ["service"], registry=r,
        )
        self.consumer_lag = _Source("consumer_lag", "Records not yet read, per assigned partition",
                                    ["topic", "partition"])
        r.register(self.consumer_lag)
        self.seek_backs = _Source("engine_seek_backs", "Fetched records sent back to the broker, by reason "
                                  "(not_ready, hole, unprocessed, paused)", ["reason"], counter=True)
        r.register(self.seek_backs)
        self.rerouted = _Source("engine_rerouted_records", "Records that arrived on a partition their key "
                                "does not map to, sent on to their key's partition", ["topic"], counter=True)
        r.register(self.rerouted)
        self.recovery_remaining = _Source(
            "table_recovery_records_remaining", "Changelog records still to read, per recovering table partition",
            ["table", "partition"])
        r.register(self.recovery_remaining)

    # -- streams.engine.pipeline.Counts ---------------------------------------------------
    def processed(self, service: str, type_name: str, status: str, n: int) -> None:
        self.event_processed.labels(service, type_name, status).inc(n)

    def retried(self, service: str, tier: int) -> None:
        self.retry_scheduled.labels(service, str(tier)).inc()

    def dead_lettered(self, service: str, reason: str) -> None:
        self.dead_letter.labels(service, reason).inc()

    def batch(self, service: str, size: int, seconds: float, latencies: Sequence[float]) -> None:
        self.batch_seconds.labels(service).observe(seconds)
        self.batch_size.labels(service).observe(size)
        self.event_latency.observe_many(service, latencies)

    def send_retried(self, service: str, n: int) -> None:
        self.publish_failures.labels(service).inc(n)

    def expired(self, table: str, n: int) -> None:
        self.dedup_expired.labels(table).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
