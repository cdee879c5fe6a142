"""The commit protocol of streams.pipeline.Pipeline, with fakes of its ports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime, timezone

import pytest

from agents.notifications import NotificationsService
from streams import headers as H
from streams.errors import GatewayRejected, GatewayUnavailable
from streams.events import NotificationSent
from streams.metrics import Metrics
from streams.pipeline import BatchResult, Outgoing, Pipeline, Record, RetryPolicy, send_until_acked
from tests.unit.fakes import NOW, NOW_MS, PAID_TOPIC, DictDedupStore, FakeNotifier, FakePublisher, paid_record, wait_until

DELAYS = (1.0, 2.0)
TTL_MS = 3_600_000
SENT_TOPIC = NotificationSent.topic()
RETRY_1 = "notifications.retry.1"
RETRY_2 = "notifications.retry.2"
DLQ = "notifications.dlq"


class Harness:
    def __init__(self, *, auto_ack: bool = True, errors: dict[str, BaseException] | None = None,
                 data: dict[int, dict[bytes, int]] | None = None, ttl_ms: int = TTL_MS) -> None:
        self.publisher = FakePublisher(auto_ack=auto_ack)
        self.dedup = DictDedupStore(self.publisher, data)
        self.notifier = FakeNotifier(errors)
        self.metrics = Metrics()
        self.pipeline = Pipeline(
            NotificationsService(self.notifier),
            publisher=self.publisher,
            dedup=self.dedup,
            metrics=self.metrics,
            retry=RetryPolicy(DELAYS),
            ttl_ms=ttl_ms,
            clock=lambda: NOW,
            send_retry_backoff=0.001,
        )

    async def process(self, records: Sequence[Record]) -> BatchResult:
        return await asyncio.wait_for(self.pipeline.process(records), 5)

    def processed(self, status: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "event_processed_total", {"service": "notifications", "type": "OrderPaid", "status": status}
        )
        return value or 0.0


def hdrs(message: Outgoing) -> dict[str, bytes]:
    names = [k for k, _ in message.headers]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    return dict(message.headers)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


# -- the happy path --------------------------------------------------------------------


async def test_success_sends_derived_event_and_marks_key() -> None:
    h = Harness()
    eid = "8d6e2f0a-3c1b-4e55-9a0e-2b7d4c1f6a90"
    rec = paid_record("o-1", partition=3, offset=10, event_id=eid)
    result = await h.process([rec])
    assert result == BatchResult(success=1)
    assert h.notifier.keys() == ["o-1"]
    [out] = h.publisher.sent
    assert out.topic == SENT_TOPIC
    assert out.key == b"o-1"
    sent = NotificationSent.model_validate_json(out.value or b"")
    assert sent.order_id == "o-1"
    assert str(sent.causation_id) == eid
    # the key is marked on the record's partition, with the event time (record timestamp here)
    assert h.dedup.marks == [{3: [(b"o-1", rec.timestamp_ms)]}]
    assert h.processed("success") == 1


async def test_event_time_is_occurred_at_when_present() -> None:
    h = Harness()
    occurred_ms = NOW_MS - 123_000
    rec = paid_record("o-1", occurred_at=iso(occurred_ms), timestamp_ms=NOW_MS - 5)
    await h.process([rec])
    assert h.dedup.marks == [{0: [(b"o-1", occurred_ms)]}]
    assert h.dedup.observed == [(0, occurred_ms)]


# -- (a) order of operations -----------------------------------------------------------


async def test_marks_only_after_derived_acks() -> None:
    """Regression: marking before the derived events' acks loses messages on SIGKILL."""
    h = Harness(auto_ack=False)
    records = [paid_record(f"o-{i}", partition=i % 2, offset=i) for i in range(4)]
    task = asyncio.create_task(h.process(records))
    await wait_until(lambda: len(h.publisher.sent) == 4)
    # every derived event is in flight, none acked: no mark may have happened
    for _ in range(3):
        await asyncio.sleep(0)
        assert h.dedup.marks == []
        assert h.publisher.release(1) == 1
        for _ in range(5):
            await asyncio.sleep(0)
        assert h.dedup.marks == [], "marked while a derived event's ack was pending"
    assert not task.done()
    h.publisher.release()
    result = await task
    assert result.success == 4
    assert h.dedup.pending_at_mark == [[]]
    assert sorted(h.dedup.marked_keys()) == [b"o-0", b"o-1", b"o-2", b"o-3"]
    kinds = [e[0] for e in h.publisher.log]
    assert kinds.index("mark") > max(i for i, k in enumerate(kinds) if k == "ack")


async def test_failure_routing_acks_also_precede_mark() -> None:
    h = Harness(auto_ack=False, errors={"o-bad": GatewayUnavailable("503")})
    task = asyncio.create_task(h.process([paid_record("o-ok"), paid_record("o-bad", offset=1)]))
    await wait_until(lambda: len(h.publisher.sent) == 2)
    assert {m.topic for m in h.publisher.sent} == {SENT_TOPIC, RETRY_1}
    h.publisher.release(1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert h.dedup.marks == []
    h.publisher.release()
    await task
    assert h.dedup.pending_at_mark == [[]]
    assert h.dedup.marked_keys() == [b"o-ok"]


# -- (b), (c) deduplication ------------------------------------------------------------


async def test_duplicates_in_store_are_skipped_and_counted() -> None:
    h = Harness(data={0: {b"o-1": NOW_MS - 10_000}})
    result = await h.process([paid_record("o-1"), paid_record("o-2", offset=1)])
    assert result == BatchResult(success=1, duplicate=1)
    assert h.notifier.keys() == ["o-2"]
    assert [m.key for m in h.publisher.sent] == [b"o-2"]
    assert h.dedup.marked_keys() == [b"o-2"]
    assert h.processed("duplicate") == 1
    assert h.processed("success") == 1


async def test_dedup_is_per_partition() -> None:
    h = Harness(data={1: {b"o-1": NOW_MS - 10_000}})
    result = await h.process([paid_record("o-1", partition=0)])
    assert result.success == 1
    assert h.dedup.lookups == [(0, [b"o-1"])]


async def test_one_multi_get_per_partition() -> None:
    h = Harness()
    records = [paid_record(f"o-{i}", partition=i % 2, offset=i) for i in range(6)]
    await h.process(records)
    assert sorted(h.dedup.lookups) == [(0, [b"o-0", b"o-2", b"o-4"]), (1, [b"o-1", b"o-3", b"o-5"])]


async def test_key_repeated_in_one_batch_is_processed_once() -> None:
    h = Harness()
    records = [paid_record("o-1", offset=0), paid_record("o-2", offset=1), paid_record("o-1", offset=2)]
    result = await h.process(records)
    assert result == BatchResult(success=2, duplicate=1)
    assert sorted(h.notifier.keys()) == ["o-1", "o-2"]
    assert sorted(m.key for m in h.publisher.to(SENT_TOPIC)) == [b"o-1", b"o-2"]
    assert sorted(h.dedup.marked_keys()) == [b"o-1", b"o-2"]


async def test_second_batch_sees_the_first_batch_marks() -> None:
    h = Harness()
    await h.process([paid_record("o-1")])
    result = await h.process([paid_record("o-1", offset=1)])
    assert result == BatchResult(duplicate=1)
    assert h.notifier.keys() == ["o-1"]


# -- (d) TTL on event time -------------------------------------------------------------


async def test_marker_older_than_ttl_is_absent() -> None:
    event_ms = NOW_MS - 1000
    h = Harness(data={0: {b"o-1": event_ms - TTL_MS - 1}})
    result = await h.process([paid_record("o-1", occurred_at=iso(event_ms))])
    assert result == BatchResult(success=1)
    assert h.notifier.keys() == ["o-1"]
    assert h.dedup.data[0][b"o-1"] == event_ms  # re-marked with the new event time


async def test_marker_younger_than_ttl_is_duplicate() -> None:
    event_ms = NOW_MS - 1000
    h = Harness(data={0: {b"o-1": event_ms - TTL_MS + 1}})
    result = await h.process([paid_record("o-1", occurred_at=iso(event_ms))])
    assert result == BatchResult(duplicate=1)
    assert h.notifier.keys() == []


async def test_ttl_is_relative_to_event_time_not_wall_clock() -> None:
    # The marker is far older than the TTL by wall clock (NOW), but the replayed
    # event is itself old: relative to *its* time the marker is young → duplicate.
    event_ms = NOW_MS - 10 * TTL_MS
    h = Harness(data={0: {b"o-1": event_ms - 60_000}})
    result = await h.process([paid_record("o-1", occurred_at=iso(event_ms), timestamp_ms=NOW_MS)])
    assert result == BatchResult(duplicate=1)


async def test_ttl_uses_record_timestamp_without_occurred_at() -> None:
    ts = NOW_MS - 1000
    h = Harness(data={0: {b"o-1": ts - TTL_MS - 1, b"o-2": ts - TTL_MS + 1}})
    result = await h.process([paid_record("o-1", timestamp_ms=ts), paid_record("o-2", timestamp_ms=ts)])
    assert result == BatchResult(success=1, duplicate=1)
    assert h.notifier.keys() == ["o-1"]


async def test_observe_advances_watermark_with_event_times() -> None:
    h = Harness()
    await h.process([paid_record("o-1", partition=2, timestamp_ms=111), paid_record("o-2", partition=2, timestamp_ms=222)])
    assert sorted(h.dedup.observed) == [(2, 111), (2, 222)]


# -- (e) retryable failure → retry tier ------------------------------------------------


async def test_gateway_unavailable_goes_to_retry_1() -> None:
    h = Harness(errors={"o-1": GatewayUnavailable("HTTP 503")})
    rec = paid_record("o-1", partition=2, offset=17, headers={"traceparent": b"00-abc"})
    result = await h.process([rec])
    assert result == BatchResult(retry=1)
    [out] = h.publisher.sent
    assert out.topic == RETRY_1
    assert out.key == b"o-1"
    assert out.value == rec.value  # bytes verbatim
    assert out.partition == 2
    hd = hdrs(out)
    assert hd[H.ATTEMPT] == b"1"
    assert hd[H.NOT_BEFORE] == str(NOW_MS + int(DELAYS[0] * 1000)).encode()
    assert hd[H.SOURCE_TOPIC] == PAID_TOPIC.encode()
    assert hd[H.SOURCE_PARTITION] == b"2"
    assert hd[H.SOURCE_OFFSET] == b"17"
    assert hd[H.ERROR_TYPE] == b"GatewayUnavailable"
    assert b"503" in hd[H.ERROR_MESSAGE]
    assert hd[H.FIRST_FAILED_AT] == hd[H.FAILED_AT] == str(NOW_MS).encode()
    assert hd["traceparent"] == b"00-abc"  # foreign headers travel unchanged
    assert H.DLQ_REASON not in hd
    # not marked: the retry will process it
    assert h.dedup.marks == []
    assert h.metrics.registry.get_sample_value(
        "retry_scheduled_total", {"service": "notifications", "tier": "1"}) == 1


async def test_unknown_exception_is_retried() -> None:
    h = Harness(errors={"o-1": RuntimeError("bug")})
    await h.process([paid_record("o-1")])
    [out] = h.publisher.sent
    assert out.topic == RETRY_1
    assert hdrs(out)[H.ERROR_TYPE] == b"TransientError"
    assert h.dedup.marks == []


async def test_retry_record_failing_again_goes_to_next_tier_keeping_its_source() -> None:
    h = Harness(errors={"o-1": GatewayUnavailable("timeout")})
    first_failed = str(NOW_MS - 5000).encode()
    rec = paid_record(
        "o-1", topic=RETRY_1, partition=2, offset=3,
        headers={H.ATTEMPT: b"1", H.SOURCE_TOPIC: PAID_TOPIC.encode(), H.SOURCE_PARTITION: b"2",
                 H.SOURCE_OFFSET: b"17", H.FIRST_FAILED_AT: first_failed,
                 H.NOT_BEFORE: b"1", H.FAILED_AT: b"1"},
    )
    await h.process([rec])
    [out] = h.publisher.sent
    assert out.topic == RETRY_2
    hd = hdrs(out)
    assert hd[H.ATTEMPT] == b"2"
    assert hd[H.NOT_BEFORE] == str(NOW_MS + int(DELAYS[1] * 1000)).encode()
    assert hd[H.SOURCE_TOPIC] == PAID_TOPIC.encode()
    assert hd[H.SOURCE_OFFSET] == b"17"
    assert hd[H.FIRST_FAILED_AT] == first_failed
    assert hd[H.FAILED_AT] == str(NOW_MS).encode()
    assert out.value == rec.value


async def test_retry_record_that_succeeds_is_marked() -> None:
    h = Harness()
    rec = paid_record("o-1", topic=RETRY_1, partition=2, headers={H.ATTEMPT: b"1", H.SOURCE_PARTITION: b"2"})
    result = await h.process([rec])
    assert result == BatchResult(success=1)
    assert h.dedup.marks == [{2: [(b"o-1", rec.timestamp_ms)]}]


# -- (f), (g), (h) dead letters --------------------------------------------------------


async def test_last_retry_failing_goes_to_dlq_max_attempts() -> None:
    h = Harness(errors={"o-1": GatewayUnavailable("HTTP 503")})
    rec = paid_record("o-1", topic=f"notifications.retry.{len(DELAYS)}", partition=1,
                      headers={H.ATTEMPT: str(len(DELAYS)).encode(), H.SOURCE_TOPIC: PAID_TOPIC.encode(),
                               H.SOURCE_PARTITION: b"1", H.SOURCE_OFFSET: b"9"})
    result = await h.process([rec])
    assert result == BatchResult(dead_letter=1)
    [out] = h.publisher.sent
    assert out.topic == DLQ
    hd = hdrs(out)
    assert hd[H.DLQ_REASON] == b"max_attempts"
    assert hd[H.ATTEMPT] == str(len(DELAYS) + 1).encode()
    assert H.NOT_BEFORE not in hd
    assert hd[H.SOURCE_TOPIC] == PAID_TOPIC.encode()
    assert out.value == rec.value and out.key == b"o-1" and out.partition == 1
    assert h.dedup.marks == []
    assert h.metrics.registry.get_sample_value(
        "dead_letter_total", {"service": "notifications", "reason": "max_attempts"}) == 1


async def test_gateway_rejected_goes_to_dlq_at_once() -> None:
    h = Harness(errors={"o-1": GatewayRejected("HTTP 400: bad number")})
    rec = paid_record("o-1", partition=3, offset=4)
    result = await h.process([rec])
    assert result == BatchResult(dead_letter=1)
    [out] = h.publisher.sent
    assert out.topic == DLQ
    hd = hdrs(out)
    assert hd[H.DLQ_REASON] == b"non_retryable"
    assert hd[H.ATTEMPT] == b"1"
    assert hd[H.ERROR_TYPE] == b"GatewayRejected"
    assert out.value == rec.value and out.partition == 3
    assert h.dedup.marks == []


@pytest.mark.parametrize("value", [b"not json", b"\x00\xff garbage", b"[1,2]"])
async def test_poison_goes_to_dlq_with_decode_error(value: bytes) -> None:
    h = Harness()
    rec = Record(PAID_TOPIC, 1, 42, b"o-1", value, NOW_MS - 1000, {})
    result = await h.process([rec, paid_record("o-2", offset=43)])
    assert result == BatchResult(success=1, dead_letter=1)
    [dead] = h.publisher.to(DLQ)
    assert dead.value == value
    assert dead.key == b"o-1"
    assert dead.partition == 1
    hd = hdrs(dead)
    assert hd[H.DLQ_REASON] == b"decode_error"
    assert hd[H.SOURCE_OFFSET] == b"42"
    assert h.notifier.keys() == ["o-2"]
    assert h.dedup.marked_keys() == [b"o-2"]
    assert all(b"o-1" not in keys for _, keys in h.dedup.lookups)


async def test_invalid_event_goes_to_dlq_with_validation_error() -> None:
    h = Harness()
    rec = paid_record("o-1", key=b"o-other")
    result = await h.process([rec])
    assert result == BatchResult(dead_letter=1)
    [dead] = h.publisher.sent
    assert dead.topic == DLQ
    assert hdrs(dead)[H.DLQ_REASON] == b"validation_error"
    assert dead.value == rec.value
    assert h.notifier.keys() == []


async def test_mixed_batch_counts_every_outcome() -> None:
    h = Harness(data={0: {b"o-dup": NOW_MS - 1000}},
                errors={"o-retry": GatewayUnavailable("x"), "o-reject": GatewayRejected("y")})
    records = [
        paid_record("o-ok", offset=0), paid_record("o-dup", offset=1), paid_record("o-retry", offset=2),
        paid_record("o-reject", offset=3), Record(PAID_TOPIC, 0, 4, b"o-poison", b"{", 0, {}),
    ]
    result = await h.process(records)
    assert result == BatchResult(success=1, duplicate=1, retry=1, dead_letter=2)
    assert sorted(m.topic for m in h.publisher.sent) == sorted([SENT_TOPIC, RETRY_1, DLQ, DLQ])
    assert h.dedup.marked_keys() == [b"o-ok"]


# -- (i) sends whose ack fails ---------------------------------------------------------


async def test_failed_ack_is_sent_again_until_acked_then_marked() -> None:
    h = Harness()
    h.publisher.fail_acks = 2
    result = await h.process([paid_record("o-1")])
    assert result == BatchResult(success=1)
    derived = h.publisher.to(SENT_TOPIC)
    assert len(derived) == 3  # two lost acks, then acked
    assert derived[0] == derived[1] == derived[2]
    kinds = [e[0] for e in h.publisher.log]
    assert kinds == ["send", "nack", "send", "nack", "send", "ack", "mark"]
    assert h.metrics.registry.get_sample_value(
        "publish_failures_total", {"service": "notifications"}) == 2


async def test_send_until_acked_only_resends_the_failed() -> None:
    pub = FakePublisher()
    msgs = [Outgoing("t", b"a", b"1"), Outgoing("t", b"b", b"2"), Outgoing("t", b"c", b"3")]
    pub.fail_acks = 1  # the first send (b"a") loses its ack
    failures: list[int] = []
    await asyncio.wait_for(send_until_acked(pub, msgs, backoff=0.001, on_failure=failures.append), 5)
    assert [m.key for m in pub.sent] == [b"a", b"b", b"c", b"a"]
    assert failures == [1]
    assert all(f.done() and f.exception() is None for f in pub.futures[1:])


async def test_send_until_acked_waits_for_every_ack() -> None:
    pub = FakePublisher(auto_ack=False)
    task = asyncio.create_task(send_until_acked(pub, [Outgoing("t", b"a", b"1"), Outgoing("t", b"b", b"2")]))
    await wait_until(lambda: len(pub.sent) == 2)
    pub.release(1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    pub.release()
    await asyncio.wait_for(task, 1)


async def test_send_that_raises_is_sent_again_until_acked() -> None:
    h = Harness()
    h.publisher.raise_on_send = 1
    result = await h.process([paid_record("o-1")])
    assert result == BatchResult(success=1)
    assert len(h.publisher.to(SENT_TOPIC)) == 1
    assert h.dedup.marked_keys() == [b"o-1"]


async def test_failing_mark_is_tried_again() -> None:
    h = Harness()
    calls = 0
    original = h.dedup.mark

    async def flaky(marks: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("changelog unavailable")
        await original(marks)  # type: ignore[arg-type]

    h.dedup.mark = flaky  # type: ignore[method-assign]
    result = await h.process([paid_record("o-1")])
    assert result.success == 1
    assert calls == 2
    assert h.dedup.marked_keys() == [b"o-1"]


# -- the handler's side effect ---------------------------------------------------------


async def test_handler_gets_idempotency_key_and_derived_id_is_stable() -> None:
    h = Harness()
    await h.process([paid_record("o-1")])
    h2 = Harness()
    await h2.process([paid_record("o-1")])
    [(note, key)] = h.notifier.calls
    assert key == "o-1" and note.order_id == "o-1" and note.user_id == "u-7"
    assert "12.5" in note.text
    a = json.loads(h.publisher.sent[0].value or b"")
    b = json.loads(h2.publisher.sent[0].value or b"")
    assert a["event_id"] == b["event_id"]  # a replay re-emits the same NotificationSent id


async def test_concurrency_limit_is_respected() -> None:
    running = 0
    peak = 0

    class SlowNotifier(FakeNotifier):
        async def send(self, notification, idempotency_key):  # type: ignore[no-untyped-def]
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001)
            running -= 1

    pub = FakePublisher()
    pipeline = Pipeline(NotificationsService(SlowNotifier()), publisher=pub, dedup=DictDedupStore(pub),
                        metrics=Metrics(), retry=RetryPolicy(DELAYS), ttl_ms=TTL_MS,
                        clock=lambda: NOW, concurrency=3)
    result = await pipeline.process([paid_record(f"o-{i}", offset=i) for i in range(10)])
    assert result.success == 10
    assert 1 < peak <= 3
