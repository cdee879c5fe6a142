"""The embedded broker's short ListOffsets answer, and the Fetch-watermark fix: on Tansu by
name (the quirk is Tansu's; on Apache Kafka ListOffsets is trusted, test_kafka_worker.py)."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.faust.compat import fetch_high_watermarks
from harness.kafka import produce

pytestmark = pytest.mark.kafka


async def test_fetch_high_watermark_is_the_log_end_where_list_offsets_is_short(tansu):
    for n in (10, 1, 5):  # three produce calls → three batches in partition 0
        await produce(tansu.bootstrap, "t-offsets", [(b"k", b"v")] * n, partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition("t-offsets", 0)
        listed = await consumer.end_offsets([tp])
        await consumer._client.force_metadata_update()
        fixed = await fetch_high_watermarks(consumer._client, [tp], listed)
    finally:
        await consumer.stop()
    assert fixed[tp] == 16
    # The quirk itself: if this starts failing, the broker was fixed upstream and
    # END_OFFSETS_FROM_FETCH can default to off.
    assert listed[tp] < 16
