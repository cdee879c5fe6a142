"""Reading the worker's ``/metrics`` in tests (:func:`harness.worker.metric_value`), on the
exposition of the worker's own collectors (:class:`streams.metrics.Metrics`).

The rule (issue 26): a name the exposition does not export, or a label no sample of it
carries, is an error — never 0. Otherwise a misspelt name reads as 0 and every ``== 0``
check on it passes whatever the worker does: the hostile future-timestamp test once
summed ``dedup_expired_total`` while the worker exports ``dedup_keys_expired_total``.
"""

from __future__ import annotations

import pytest

from harness.worker import metric_names, metric_value
from streams.metrics import Metrics


def exposition(metrics: Metrics) -> str:
    return metrics.exposition().decode()


def test_a_name_the_worker_does_not_export_is_an_error_not_zero():
    metrics = Metrics()
    text = exposition(metrics)
    # The worker's name, before any key expired: a known family with no child yet is 0.
    assert metric_value(text, "dedup_keys_expired_total") == 0
    # The name the old test summed: not exported, so no check on it can pass vacuously.
    with pytest.raises(KeyError, match="dedup_expired_total"):
        metric_value(text, "dedup_expired_total")
    metrics.expired("notifications-dedup", 3)
    text = exposition(metrics)
    assert metric_value(text, "dedup_keys_expired_total") == 3
    assert metric_value(text, "dedup_keys_expired_total", table="notifications-dedup") == 3
    assert metric_value(text, "dedup_keys_expired_total", table="inventory-dedup") == 0
    with pytest.raises(KeyError, match="dedup_expired_total"):
        metric_value(text, "dedup_expired_total")


def test_a_label_no_sample_carries_is_an_error_a_label_value_none_has_is_zero():
    metrics = Metrics()
    metrics.processed("notifications", "OrderPaid", "success", 5)
    metrics.processed("notifications", "OrderPaid", "duplicate", 2)
    text = exposition(metrics)
    assert metric_value(text, "event_processed_total") == 7
    assert metric_value(text, "event_processed_total", service="notifications", status="duplicate") == 2
    assert metric_value(text, "event_processed_total", service="order-state") == 0  # a value: none yet
    with pytest.raises(KeyError, match="statuss"):  # a misspelt label
        metric_value(text, "event_processed_total", statuss="duplicate")


def test_the_names_a_family_exports_include_its_type_suffixes_and_nothing_else():
    metrics = Metrics()
    metrics.batch("notifications", 10, 0.01, [0.001] * 10)
    names = metric_names(exposition(metrics))
    assert {"event_processed_total", "dedup_keys_expired_total", "batch_size_events_bucket",
            "batch_size_events_count", "batch_size_events_sum"} <= names
    assert "dedup_keys_expired" not in names and "event_processed" not in names
    assert metric_value(exposition(metrics), "batch_size_events_count", service="notifications") == 1


def test_the_fuzzers_sample_reader_refuses_a_name_the_worker_does_not_export():
    from tests.support.hostile import samples

    metrics = Metrics()
    metrics.dead_lettered("notifications", "max_attempts")
    text = exposition(metrics)
    assert samples(text, "dead_letter_total") == [({"service": "notifications", "reason": "max_attempts"}, 1.0)]
    assert samples(Metrics().exposition().decode(), "dead_letter_total") == []  # exported, no child yet
    with pytest.raises(KeyError, match="dead_letters_total"):
        samples(text, "dead_letters_total")
