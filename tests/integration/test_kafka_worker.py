"""The worker on Apache Kafka (the session's one broker, emptied before each test).

What Tansu cannot show: Kafka's own ListOffsets (no workaround path taken), changelog
topics created compacted as the broker reports them, a broker restarted with its logs
kept losing nothing, recovery from a log the cleaner compacted. Every worker here starts
on a Kafka without its topics: a worker that subscribed before declaring them was
assigned nothing for minutes (Faust's assignor ignores missing topics; fixed in
ae0f3cf, whose declaration before the subscription these tests keep honest).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from aiokafka.client import AIOKafkaClient

from streams.events import NotificationSent, OrderPaid
from streams.faust.compat import list_offsets_may_be_short
from harness.events import paid
from harness.gateway import GatewayStub
from harness.kafka import produce, read_topic, topic_config, wait_consumed
from harness.worker import metric_value

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()


async def test_capability_check_tells_kafka_from_tansu(kafka, tansu):
    """On Kafka, ListOffsets is trusted (the Fetch workaround is not taken); on Tansu it is not."""
    answers = {}
    for name, b in (("kafka", kafka), ("tansu", tansu)):
        client = AIOKafkaClient(bootstrap_servers=b.bootstrap)
        await client.bootstrap()
        try:
            answers[name] = await list_offsets_may_be_short(client)
        finally:
            await client.close()
    assert answers == {"kafka": False, "tansu": True}


async def test_notifications_end_to_end_on_kafka(kafka, kafka_worker_factory):
    gateway = await GatewayStub().start()
    try:
        worker = kafka_worker_factory(notifier_url=gateway.url)
        await asyncio.to_thread(worker.start().wait_ready)
        ids = [f"o-{i}" for i in range(1500)]
        events = [paid(i) for i in ids] + [paid(random.choice(ids)) for _ in range(500)]
        random.Random(7).shuffle(events)
        await produce(kafka.bootstrap, PAID, events)

        await wait_consumed(kafka.bootstrap, [PAID])
        sent = await read_topic(kafka.bootstrap, SENT, until=lambda r: len(Counter(x.key for x in r)) >= 1500)
        per_order = Counter(r.key for r in sent)
        assert set(per_order) == {i.encode() for i in ids}
        assert [k for k, n in per_order.items() if n != 1] == []
        assert len(gateway.requests) == 1500
        text = await asyncio.to_thread(worker.metrics)
        assert metric_value(text, "event_processed_total", service="notifications", type="OrderPaid",
                            status="duplicate") == 500
    finally:
        await gateway.stop()


async def test_broker_restart_with_logs_kept_loses_nothing_and_changelogs_are_compacted(kafka, kafka_worker_factory):
    gateway = await GatewayStub().start()
    try:
        worker = kafka_worker_factory(notifier_url=gateway.url)
        await asyncio.to_thread(worker.start().wait_ready)
        first = [f"a-{i}" for i in range(300)]
        await produce(kafka.bootstrap, PAID, [paid(i) for i in first])
        await wait_consumed(kafka.bootstrap, [PAID])

        # changelog topics as the broker itself reports them
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            changelogs = [t for t in await admin.list_topics() if t.endswith("-changelog")]
        finally:
            await admin.close()
        assert changelogs, "the worker made no changelog topic"
        for topic in changelogs:
            assert (await topic_config(kafka.bootstrap, topic))["cleanup.policy"] == "compact", topic

        # the broker stops (controlled shutdown) and comes back on the same ports and logs
        await asyncio.to_thread(kafka.stop)
        await asyncio.to_thread(kafka.start)
        second = [f"b-{i}" for i in range(300)]
        await produce(kafka.bootstrap, PAID, [paid(i) for i in second] + [paid(i) for i in first[:50]])
        await wait_consumed(kafka.bootstrap, [PAID])

        sent = await read_topic(kafka.bootstrap, SENT, until=lambda r: len(Counter(x.key for x in r)) >= 600)
        per_order = Counter(r.key for r in sent)
        assert set(per_order) == {i.encode() for i in first + second}, "an order was lost across the restart"
        assert [k for k, n in per_order.items() if n != 1] == [], "a repeat got through after the restart"
        assert worker.proc is not None and worker.proc.poll() is None, "the worker had to be restarted"
        assert worker.starts == 1
    finally:
        await gateway.stop()


DEDUP_CHANGELOG = "order-streams-notifications-dedup-changelog"


async def test_wiped_worker_recovers_the_same_table_from_a_compacted_changelog(kafka, kafka_worker_factory):
    """The notifications dedup table: A's keys expire (TTL sweep → tombstones), B's stay;
    the log cleaner compacts the changelog (A's puts gone); a worker with no local state
    rebuilds the table from it: every B key is still a duplicate, every A key is new.

    Times (streams/engine/streamtime.py): markers are stream times; B stamped 58 s after
    A (within the 60 s skew a worker believes) moves stream time past A's markers + the
    55 s TTL; B's markers then live 55 s of quiet time in each worker process."""
    import time

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:  # the changelog as Faust would make it, but compacted soon: tiny segments, any dirt
        await admin.create_topics([NewTopic(DEDUP_CHANGELOG, 4, 1, topic_configs={
            "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "0"})])
    finally:
        await admin.close()
    gateway = await GatewayStub().start()
    try:
        w1 = kafka_worker_factory("w1", notifier_url=gateway.url, dedup_ttl="55")
        await asyncio.to_thread(w1.start().wait_ready)
        now_ms = int(time.time() * 1000)
        a_ids = [f"a-{i}" for i in range(200)]
        b_ids = [f"b-{i}" for i in range(200)]
        await produce(kafka.bootstrap, PAID, [paid(i) for i in a_ids], timestamp_ms=now_ms)
        await wait_consumed(kafka.bootstrap, [PAID])
        await produce(kafka.bootstrap, PAID, [paid(i) for i in b_ids], timestamp_ms=now_ms + 58_000)
        await wait_consumed(kafka.bootstrap, [PAID])

        def tombstoned(records: list) -> set[bytes]:  # order ids (index entries start with \x00)
            return {r.key for r in records if r.value is None and not r.key.startswith(b"\x00")}

        log = await read_topic(kafka.bootstrap, DEDUP_CHANGELOG,
                               until=lambda rs: tombstoned(rs) >= {i.encode() for i in a_ids}, timeout=60)
        assert tombstoned(log) == {i.encode() for i in a_ids}, "the TTL sweep did not tombstone exactly A"
        # Close the segments holding the tombstones: re-append each partition's last record
        # verbatim (the table does not change), after segment.ms.
        last = {}
        for r in log:
            last[r.partition] = r
        await asyncio.sleep(0.2)  # segment.ms: a roll needs an append after it
        for r in last.values():
            await produce(kafka.bootstrap, DEDUP_CHANGELOG, [(r.key, r.value)], partition=r.partition,
                          headers=list(r.headers.items()))

        def a_puts(records: list) -> int:
            return sum(1 for r in records if r.key.startswith(b"a-") and r.value is not None)

        deadline = time.monotonic() + 60
        while a_puts(compacted := await read_topic(kafka.bootstrap, DEDUP_CHANGELOG, timeout=10)):
            assert time.monotonic() < deadline, f"not compacted: {a_puts(compacted)} puts of A remain"
            await asyncio.sleep(0.5)
        assert len(compacted) < len(log), "the log cleaner removed nothing"

        # a wiped worker (new data dir, same group) rebuilds the table from the compacted log
        await asyncio.to_thread(w1.stop)
        w2 = kafka_worker_factory("w2", notifier_url=gateway.url, dedup_ttl="55")
        await asyncio.to_thread(w2.start().wait_ready)
        await produce(kafka.bootstrap, PAID, [paid(i) for i in b_ids + a_ids], timestamp_ms=now_ms + 58_000)
        await wait_consumed(kafka.bootstrap, [PAID])
        text = await asyncio.to_thread(w2.metrics)
        done = {status: metric_value(text, "event_processed_total", service="notifications", type="OrderPaid",
                                     status=status) for status in ("success", "duplicate")}
        assert done == {"success": 200, "duplicate": 200}, "B's keys must be remembered, A's forgotten"
        sent = Counter(r.key for r in await read_topic(kafka.bootstrap, SENT, expect=600))
        assert all(sent[i.encode()] == 2 for i in a_ids) and all(sent[i.encode()] == 1 for i in b_ids)
    finally:
        await gateway.stop()
