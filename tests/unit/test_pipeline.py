"""The commit protocol (streams.engine.pipeline.Pipeline), with fakes of its ports."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence

import pytest

from agents.notifications import NotificationsService
from streams.engine import headers as H
from streams.engine.errors import GatewayRejected, GatewayUnavailable, TooLarge
from streams.engine.pipeline import Pipeline
from streams.engine.records import Outgoing, Record
from streams.engine.routing import RetryPolicy
from streams.events import NotificationSent
from streams.metrics import Metrics
from streams.registry import topics_written
from streams.engine.testing import NOW, NOW_MS, Clock, FakePublisher, MemoryStore, wait_until
from tests.unit.fakes import PAID_TOPIC, FakeNotifier, paid_record

DELAYS = (1.0, 2.0)
TTL_MS = 3_600_000
SENT_TOPIC = NotificationSent.topic()
RETRY_1 = "notifications.retry.1"
RETRY_2 = "notifications.retry.2"
DLQ = "notifications.dlq"
DEDUP = "notifications-dedup"
ALLOWED = topics_written(len(DELAYS)) | {f"{DEDUP}-changelog"}


class Harness:
    def __init__(self, *, auto_ack: bool = True, errors: dict[str, BaseException] | None = None,
                 markers: dict[int, dict[bytes, int]] | None = None, ttl_ms: int = TTL_MS,
                 max_message_bytes: int = 1024 * 1024) -> None:
        self.publisher = FakePublisher(auto_ack=auto_ack, max_message_bytes=max_message_bytes)
        self.store = MemoryStore(self.publisher)
        for partition, kv in (markers or {}).items():
            self.store.table(DEDUP, partition).update({k: str(v).encode() for k, v in kv.items()})
        self.notifier = FakeNotifier(errors)
        self.metrics = Metrics()
        self.clock = Clock(NOW)
        self.pipeline = Pipeline(
            NotificationsService(self.notifier, concurrency=8), publisher=self.publisher, store=self.store,
            counts=self.metrics, policy=RetryPolicy(DELAYS), allowed=ALLOWED.__contains__,
            ttl_ms=ttl_ms, clock=self.clock, send_backoff=0.001,
        )

    async def process(self, records: Sequence[Record]) -> Counter[str]:
        return await asyncio.wait_for(self.pipeline.process(records), 5)

    def processed(self, status: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "event_processed_total", {"service": "notifications", "type": "OrderPaid", "status": status})
        return value or 0.0

    def markers(self, partition: int = 0) -> dict[bytes, int]:
        return {k: int(v) for k, v in self.store.table(DEDUP, partition).items() if not k.startswith(b"\x00")}

    def marked_keys(self) -> list[bytes]:
        return sorted(k for (t, p), kv in self.store.data.items() if t == DEDUP
                      for k in kv if not k.startswith(b"\x00"))


def hdrs(message: Outgoing) -> dict[str, bytes]:
    names = [k for k, _ in message.headers]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    return dict(message.headers)


# -- the happy path --------------------------------------------------------------------


async def test_success_sends_derived_event_to_the_source_partition_and_marks_key() -> None:
    h = Harness()
    eid = "8d6e2f0a-3c1b-4e55-9a0e-2b7d4c1f6a90"
    rec = paid_record("o-1", partition=3, offset=10, event_id=eid)
    assert await h.process([rec]) == Counter(success=1)
    assert h.notifier.keys() == ["o-1"]
    [out] = h.publisher.to(SENT_TOPIC)
    assert (out.key, out.partition) == (b"o-1", 3)
    sent = NotificationSent.model_validate_json(out.value or b"")
    assert sent.order_id == "o-1" and str(sent.causation_id) == eid
    assert h.markers(3) == {b"o-1": NOW_MS}  # the record's time, never older than now
    assert h.processed("success") == 1


async def test_record_time_is_the_broker_timestamp_clamped_to_the_clock() -> None:
    """Regression: one OrderPaid stamped 9999-12-31 (here: its broker timestamp) once
    moved the watermark so far that the next sweep deleted a partition's markers."""
    h = Harness()
    await h.process([paid_record("o-1", timestamp_ms=253402214400000)])
    assert h.markers() == {b"o-1": NOW_MS + 60_000}
    assert h.pipeline.watermarks[0] == NOW_MS + 60_000


# -- order of operations ---------------------------------------------------------------


async def test_state_is_written_only_after_every_derived_ack() -> None:
    """Regression: marking before the derived events' acks loses messages on SIGKILL."""
    h = Harness(auto_ack=False)
    records = [paid_record(f"o-{i}", partition=i % 2, offset=i) for i in range(4)]
    task = asyncio.create_task(h.process(records))
    await wait_until(lambda: len(h.publisher.sent) == 4)
    for _ in range(3):
        assert h.publisher.release(1) == 1
        for _ in range(5):
            await asyncio.sleep(0)
        assert h.marked_keys() == [] and not any(e[0] == "write" for e in h.publisher.log), \
            "state written while a derived event's ack was pending"
    h.publisher.release(1)
    await wait_until(lambda: len(h.publisher.pending()) > 0)  # the changelog records
    assert h.marked_keys() == []  # nothing local before the changelog acks
    h.publisher.release()
    assert await task == Counter(success=4)
    assert h.store.pending_at_write == [[]]
    assert h.marked_keys() == [b"o-0", b"o-1", b"o-2", b"o-3"]
    kinds = [e[0] for e in h.publisher.log]
    derived_acks = [i for i, e in enumerate(h.publisher.log) if e[0] == "ack" and e[1] == SENT_TOPIC]
    changelog_sends = [i for i, e in enumerate(h.publisher.log) if e[0] == "send" and "changelog" in e[1]]
    assert max(derived_acks) < min(changelog_sends) < kinds.index("write")


async def test_retry_and_dead_letter_acks_also_precede_the_state_write() -> None:
    h = Harness(auto_ack=False, errors={"o-bad": GatewayUnavailable("503")})
    task = asyncio.create_task(h.process([paid_record("o-ok"), paid_record("o-bad", offset=1)]))
    await wait_until(lambda: len(h.publisher.sent) == 2)
    assert {m.topic for m in h.publisher.sent} == {SENT_TOPIC, RETRY_1}
    h.publisher.release(1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert h.marked_keys() == []
    async with asyncio.timeout(5):  # a batch that never ends fails here, not at pytest-timeout
        while not task.done():
            h.publisher.release()
            await asyncio.sleep(0)
    await task
    assert h.marked_keys() == [b"o-ok"]


async def test_persisted_changelog_offset_is_the_last_record_written() -> None:
    """Regression: it was a batch's first offset, so recovery re-read a batch."""
    h = Harness()
    await h.process([paid_record(f"o-{i}", offset=i) for i in range(5)])
    assert h.store.persisted[(DEDUP, 0)] == 4


# -- deduplication ---------------------------------------------------------------------


async def test_duplicates_in_store_are_skipped_and_counted() -> None:
    h = Harness(markers={0: {b"o-1": NOW_MS - 10_000}})
    assert await h.process([paid_record("o-1"), paid_record("o-2", offset=1)]) == Counter(success=1, duplicate=1)
    assert h.notifier.keys() == ["o-2"]
    assert [m.key for m in h.publisher.to(SENT_TOPIC)] == [b"o-2"]
    assert (h.processed("duplicate"), h.processed("success")) == (1, 1)


async def test_dedup_is_per_partition_with_one_multi_get_each() -> None:
    h = Harness(markers={1: {b"o-1": NOW_MS - 10_000}})
    records = [paid_record(f"o-{i}", partition=i % 2, offset=i) for i in range(6)]
    records.append(paid_record("o-1", partition=0, offset=7))
    result = await h.process(records)
    assert result["success"] == 6  # o-1 is marked on partition 1 only
    dedup_reads = sorted((p, keys) for t, p, keys in h.store.reads if t == DEDUP)
    assert dedup_reads == [(0, [b"o-0", b"o-2", b"o-4", b"o-1"]), (1, [b"o-1", b"o-3", b"o-5"])]


async def test_key_repeated_in_one_batch_is_processed_once() -> None:
    h = Harness()
    records = [paid_record("o-1", offset=0), paid_record("o-2", offset=1), paid_record("o-1", offset=2)]
    assert await h.process(records) == Counter(success=2, duplicate=1)
    assert sorted(h.notifier.keys()) == ["o-1", "o-2"]


async def test_second_batch_sees_the_first_batch_marks() -> None:
    h = Harness()
    await h.process([paid_record("o-1")])
    assert await h.process([paid_record("o-1", offset=1)]) == Counter(duplicate=1)
    assert h.notifier.keys() == ["o-1"]


async def test_marker_older_than_ttl_relative_to_the_record_is_absent() -> None:
    record_ms = NOW_MS - 1000
    h = Harness(markers={0: {b"o-1": record_ms - TTL_MS - 1}})
    assert await h.process([paid_record("o-1", timestamp_ms=record_ms)]) == Counter(success=1)
    assert h.markers() == {b"o-1": NOW_MS}


async def test_marker_younger_than_ttl_is_a_duplicate_even_for_an_older_record() -> None:
    h = Harness(markers={0: {b"o-1": NOW_MS - 1000}})
    assert await h.process([paid_record("o-1", timestamp_ms=NOW_MS - 50_000)]) == Counter(duplicate=1)


async def test_ttl_sweep_removes_what_is_due_through_the_index_only() -> None:
    h = Harness(ttl_ms=10_000)
    await h.process([paid_record(f"o-{i}", offset=i, timestamp_ms=NOW_MS - 60_000) for i in range(3)])
    h.clock.now += 60  # a minute later, newer records move the watermark past the TTL
    await h.process([paid_record("o-new", offset=3, timestamp_ms=NOW_MS + 60_000)])
    assert sorted(h.markers()) == [b"o-0", b"o-1", b"o-2", b"o-new"]
    h.store.reads.clear()
    assert await h.pipeline.maintain([0]) > 0
    assert sorted(h.markers()) == [b"o-new"]
    # it read the index and the three due markers, nothing else of the table
    read_keys = [k for t, p, keys in h.store.reads for k in keys]
    assert sorted(read_keys) == [b"o-0", b"o-1", b"o-2"]
    tombstones = [m for m in h.publisher.sent if "changelog" in m.topic and m.value is None]
    assert {m.key for m in tombstones} >= {b"o-0", b"o-1", b"o-2"}
    assert h.metrics.registry.get_sample_value("dedup_keys_expired_total", {"table": DEDUP}) == 3


async def test_sweep_keeps_a_marker_renewed_after_its_index_entry() -> None:
    from streams.engine.ports import index_key

    h = Harness(ttl_ms=10_000)
    await h.process([paid_record("o-2", offset=1, timestamp_ms=NOW_MS)])
    table = h.store.table(DEDUP, 0)
    table[index_key(NOW_MS - 60_000, b"o-1")] = b"1"  # an old index entry …
    table[b"o-1"] = str(NOW_MS).encode()  # … of a marker renewed by a later event
    await h.pipeline.maintain([0])
    assert b"o-1" in h.markers()
    assert index_key(NOW_MS - 60_000, b"o-1") not in table


async def test_a_copy_stamped_long_ago_leaves_a_marker_of_now() -> None:
    """Regression (found by the fuzzer): a copy stamped two hours ago was processed
    first and its marker took that old time; the same event produced now then saw the
    marker as expired and was processed again (two SMS)."""
    h = Harness(ttl_ms=3_600_000)
    await h.process([paid_record("o-1", timestamp_ms=NOW_MS - 7_200_000)])
    assert await h.process([paid_record("o-1", offset=1, timestamp_ms=NOW_MS)]) == Counter(duplicate=1)
    assert h.notifier.keys() == ["o-1"]


async def test_sweep_needs_a_watermark() -> None:
    h = Harness(ttl_ms=1)
    h.store.table(DEDUP, 0)[b"o-1"] = b"0"
    assert await h.pipeline.maintain([0]) == 0
    assert h.markers() == {b"o-1": 0}


# -- failure routing -------------------------------------------------------------------


async def test_gateway_unavailable_goes_to_retry_1_with_headers() -> None:
    h = Harness(errors={"o-1": GatewayUnavailable("HTTP 503")})
    rec = paid_record("o-1", partition=2, offset=41, headers={"traceparent": b"t-1"})
    assert await h.process([rec]) == Counter(retry=1)
    [out] = h.publisher.sent[:1]
    assert (out.topic, out.partition, out.key, out.value) == (RETRY_1, 2, rec.key, rec.value)
    got = hdrs(out)
    assert got[H.ATTEMPT] == b"1" and got[H.NOT_BEFORE] == str(NOW_MS + 1000).encode()
    assert (got[H.SOURCE_TOPIC], got[H.SOURCE_PARTITION], got[H.SOURCE_OFFSET]) == (PAID_TOPIC.encode(), b"2", b"41")
    assert got["traceparent"] == b"t-1"
    assert h.marked_keys() == []


@pytest.mark.parametrize("attempt", [b"-2", b"-1", b"-4", b"0", b"99", b"nan", b"\xff"])
async def test_x_attempt_on_a_source_record_is_ignored(attempt: bytes) -> None:
    """Regression: x-attempt -2 sent a retry to notifications.retry.-1 (order lost),
    -1 stalled every service, -4 crashed the fetcher."""
    h = Harness(errors={"o-1": GatewayUnavailable("HTTP 503")})
    rec = paid_record("o-1", headers={H.ATTEMPT: attempt, H.SOURCE_PARTITION: b"999", H.SOURCE_TOPIC: b"x"})
    assert await h.process([rec]) == Counter(retry=1)
    [out] = h.publisher.sent
    assert (out.topic, out.partition) == (RETRY_1, 0)
    got = hdrs(out)
    assert (got[H.ATTEMPT], got[H.SOURCE_TOPIC], got[H.SOURCE_PARTITION]) == (b"1", PAID_TOPIC.encode(), b"0")


async def test_retry_record_failing_again_goes_to_the_next_tier_keeping_its_origin() -> None:
    h = Harness(errors={"o-1": GatewayUnavailable("timeout")})
    first = {H.ATTEMPT: b"1", H.SOURCE_TOPIC: PAID_TOPIC.encode(), H.SOURCE_PARTITION: b"2",
             H.SOURCE_OFFSET: b"41", H.FIRST_FAILED_AT: str(NOW_MS - 5000).encode(), H.NOT_BEFORE: b"0"}
    rec = paid_record("o-1", topic=RETRY_1, partition=2, offset=7, headers=first)
    assert await h.process([rec]) == Counter(retry=1)
    [out] = h.publisher.sent
    got = hdrs(out)
    assert (out.topic, got[H.ATTEMPT], got[H.SOURCE_OFFSET]) == (RETRY_2, b"2", b"41")
    assert got[H.FIRST_FAILED_AT] == str(NOW_MS - 5000).encode()


async def test_attempts_on_a_retry_topic_come_from_the_topic_not_the_header() -> None:
    h = Harness(errors={"o-1": GatewayUnavailable("timeout")})
    forged = {H.ATTEMPT: b"-7", H.SOURCE_TOPIC: PAID_TOPIC.encode()}
    assert await h.process([paid_record("o-1", topic=RETRY_2, headers=forged)]) == Counter(dead_letter=1)
    [out] = h.publisher.sent
    assert (out.topic, hdrs(out)[H.DLQ_REASON], hdrs(out)[H.ATTEMPT]) == (DLQ, b"max_attempts", b"3")


async def test_retry_record_naming_a_foreign_source_is_dead_lettered() -> None:
    h = Harness()
    rec = paid_record("o-1", topic=RETRY_1, headers={H.SOURCE_TOPIC: b"inventory.requests"})
    assert await h.process([rec]) == Counter(dead_letter=1)
    [out] = h.publisher.sent
    assert (out.topic, hdrs(out)[H.DLQ_REASON]) == (DLQ, b"validation_error")
    assert h.notifier.calls == []


async def test_gateway_rejected_goes_to_the_dlq_at_once() -> None:
    h = Harness(errors={"o-1": GatewayRejected("HTTP 400")})
    assert await h.process([paid_record("o-1")]) == Counter(dead_letter=1)
    [out] = h.publisher.sent
    assert (out.topic, hdrs(out)[H.DLQ_REASON]) == (DLQ, b"non_retryable")


@pytest.mark.parametrize("value", [b"", b"null", b"not json", b"[1, 2]", b"\xff\xfe"])
async def test_poison_goes_to_the_dlq_with_decode_error(value: bytes) -> None:
    h = Harness()
    rec = Record(PAID_TOPIC, 0, 5, b"o-1", value, NOW_MS)
    assert await h.process([rec]) == Counter(dead_letter=1)
    [out] = h.publisher.sent
    assert (out.topic, out.value, hdrs(out)[H.DLQ_REASON]) == (DLQ, value, b"decode_error")


@pytest.mark.parametrize("order_id", ["o\x1b[31m", "o-1\r\nX-Injected: 1", "o" * 129, "", " o-1"])
async def test_ids_outside_the_safe_set_are_validation_errors(order_id: str) -> None:
    """Regression: control characters in an order id made the HTTP client refuse the
    header on every retry (max_attempts); a 10,000-char id reached the gateway."""
    h = Harness()
    body = json.dumps({"order_id": order_id, "user_id": "u-7", "amount": 1, "version": "v1"}).encode()
    assert await h.process([Record(PAID_TOPIC, 0, 0, order_id.encode(), body, NOW_MS)]) == Counter(dead_letter=1)
    assert hdrs(h.publisher.sent[0])[H.DLQ_REASON] == b"validation_error"
    assert h.notifier.calls == []


async def test_a_derived_record_that_can_never_be_sent_dead_letters_its_event() -> None:
    h = Harness()
    h.publisher.reject[SENT_TOPIC] = TooLarge("MessageSizeTooLargeError")
    assert await h.process([paid_record("o-1")]) == Counter(dead_letter=1)
    letter = h.publisher.to(DLQ)[0]
    assert hdrs(letter)[H.DLQ_REASON] == b"too_large"
    assert h.marked_keys() == []


async def test_a_dead_letter_too_large_for_the_dlq_keeps_headers_a_digest_and_its_head() -> None:
    h = Harness(errors={"o-1": GatewayRejected("HTTP 400")}, max_message_bytes=64 * 1024)
    big = paid_record("o-1", note="x" * 200_000)
    assert await h.process([big]) == Counter(dead_letter=1)
    [letter] = h.publisher.to(DLQ)
    got = hdrs(letter)
    assert got[H.DLQ_REASON] == b"too_large"
    assert int(got["x-original-size"]) > 200_000 and len(got["x-original-sha256"]) == 64
    assert letter.value == (big.value or b"")[:1024]
    assert got[H.SOURCE_TOPIC] == PAID_TOPIC.encode()


async def test_nothing_is_ever_sent_outside_the_registry() -> None:
    h = Harness()
    h.pipeline.allowed = lambda topic: topic not in (SENT_TOPIC,)
    assert await h.process([paid_record("o-1")]) == Counter(dead_letter=1)
    assert SENT_TOPIC not in {m.topic for m in h.publisher.sent}
    assert hdrs(h.publisher.to(DLQ)[0])[H.ERROR_TYPE] == b"UnknownDestination"


async def test_last_retry_failing_goes_to_the_dlq_as_max_attempts() -> None:
    h = Harness(errors={"o-1": GatewayUnavailable("timeout")})
    rec = paid_record("o-1", topic=RETRY_2, headers={H.SOURCE_TOPIC: PAID_TOPIC.encode()})
    assert await h.process([rec]) == Counter(dead_letter=1)
    assert hdrs(h.publisher.sent[0])[H.DLQ_REASON] == b"max_attempts"


async def test_unknown_exception_is_retried() -> None:
    h = Harness(errors={"o-1": RuntimeError("bug")})
    assert await h.process([paid_record("o-1")]) == Counter(retry=1)


# -- sends and state writes that fail --------------------------------------------------


async def test_failed_ack_is_sent_again_until_acked_then_the_state_written() -> None:
    h = Harness()
    h.publisher.fail_acks = 2
    assert await h.process([paid_record("o-1")]) == Counter(success=1)
    assert [e[0] for e in h.publisher.log][:4] == ["send", "nack", "send", "nack"]
    assert h.marked_keys() == [b"o-1"]
    assert h.metrics.registry.get_sample_value("publish_failures_total", {"service": "notifications"}) == 2


async def test_send_that_raises_is_sent_again() -> None:
    h = Harness()
    h.publisher.raise_on_send = 3
    assert await h.process([paid_record("o-1")]) == Counter(success=1)
    assert len(h.publisher.to(SENT_TOPIC)) == 1


async def test_failing_state_write_is_tried_again() -> None:
    h = Harness()
    h.store.fail_writes = 2
    assert await h.process([paid_record("o-1")]) == Counter(success=1)
    assert h.marked_keys() == [b"o-1"]


async def test_a_batch_that_changed_hands_writes_no_state() -> None:
    from streams.engine.pipeline import Superseded

    h = Harness()
    with pytest.raises(Superseded):
        await h.pipeline.process([paid_record("o-1")], still_owner=lambda: False)
    assert h.marked_keys() == []


# -- handlers --------------------------------------------------------------------------


async def test_gateway_calls_of_a_batch_run_concurrently_up_to_the_limit() -> None:
    h = Harness()
    h.notifier.delay = 0.01
    await h.process([paid_record(f"o-{i}", offset=i) for i in range(40)])
    assert h.notifier.max_in_flight == 8


async def test_derived_id_is_stable_across_replays() -> None:
    a, b = Harness(), Harness()
    await a.process([paid_record("o-1")])
    await b.process([paid_record("o-1", offset=9)])
    ids = [json.loads(h.publisher.to(SENT_TOPIC)[0].value or b"")["event_id"] for h in (a, b)]
    assert ids[0] == ids[1]
