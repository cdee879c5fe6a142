"""Produce and consume helpers for tests and benchmarks (plain aiokafka).

Tests wait for conditions, never for quiet periods: :func:`read_topic` returns as
soon as its condition holds (then reads on to the topic's current end, so extra
records already written — duplicates — are seen too), and :func:`wait_consumed`
waits until the worker's group has committed every record of its source topics,
after which everything the worker derives from them is in the broker (the commit
protocol acknowledges offsets only after every derived record's ack).

Every consumer of a process that imports this module reads any bytes Kafka carries in
a header key (:func:`streams.faust.compat.read_any_header_key`, as the worker does):
the tests, the chaos runs and the bench read topics a hostile record may be in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.faust.compat import fetch_high_watermarks, read_any_header_key

GROUP = "order-streams"
read_any_header_key()


@dataclass(frozen=True)
class Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Creates ``topic`` (replication 1), as a test that needs its own topic does."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    *,
    headers: Sequence[tuple[str, bytes]] = (),
    partition: int | None = None,
    timestamp_ms: int | None = None,
) -> int:
    """Send every ``(key, value)`` with ``acks="all"`` and await all acks (with the
    record timestamp ``timestamp_ms`` when given, as a producer's CreateTime)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=v, key=k, headers=list(headers) or None, partition=partition,
                                timestamp_ms=timestamp_ms)
            for k, v in records
        ]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str, deadline: float) -> list[TopicPartition]:
    while not consumer.partitions_for_topic(topic):
        if time.monotonic() > deadline:
            return []
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float = 20.0) -> list[TopicPartition]:
    """``topic``'s partitions as ``consumer``'s own metadata lists them, refreshed until it
    does (an empty list after ``timeout``). Why: on Apache Kafka a client's metadata from
    before a topic was created lacks it until refreshed; ``consumer.topics()`` fetches a
    separate copy and leaves ``partitions_for_topic`` None."""
    return await _partitions(consumer, topic, time.monotonic() + timeout)


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The true end offset of each partition (from a Fetch high watermark)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic, time.monotonic() + 10)
        if not tps:
            return {}
        ends = await fetch_high_watermarks(consumer._client, tps, await consumer.end_offsets(tps))
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    until: Callable[[list[Consumed]], bool] | None = None,
    timeout: float = 60.0,
) -> list[Consumed]:
    """Every record of ``topic`` from the beginning: once ``expect`` records were read
    (and ``until(records)`` holds), the rest up to the topic's end at that moment."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    out: list[Consumed] = []
    try:
        deadline = time.monotonic() + timeout
        tps = await _partitions(consumer, topic, deadline)
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def take(timeout_ms: int) -> None:
            batch = await consumer.getmany(timeout_ms=timeout_ms)
            for recs in batch.values():
                out.extend(Consumed(r.topic, r.partition, r.offset, r.key, r.value,
                                    {k: v for k, v in (r.headers or ())}, r.timestamp) for r in recs)

        while time.monotonic() < deadline:
            if (expect is None or len(out) >= expect) and (until is None or until(out)):
                break
            await take(200)
        ends = await fetch_high_watermarks(consumer._client, tps, await consumer.end_offsets(tps))

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind() and time.monotonic() < deadline:
            await take(200)
        return out
    finally:
        await consumer.stop()


async def committed(bootstrap: str, topic: str, group: str = GROUP) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (0 when none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic, time.monotonic() + 10)
        return {tp.partition: (await consumer.committed(tp) or 0) for tp in tps}
    finally:
        await consumer.stop()


async def wait_consumed(bootstrap: str, topics: Iterable[str], *, group: str = GROUP,
                        timeout: float = 120.0) -> None:
    """Until the group has committed every record now in ``topics`` (the worker is done
    with them, and with everything it derives from them)."""
    deadline = time.monotonic() + timeout
    for topic in topics:
        ends = await end_offsets(bootstrap, topic)
        while True:
            done = await committed(bootstrap, topic, group)
            if all(done.get(p, 0) >= end for p, end in ends.items()):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: committed {done}, end {ends} after {timeout}s")
            await asyncio.sleep(0.2)


async def reset_broker(bootstrap: str, timeout: float = 60.0) -> None:
    """Delete every consumer group and every topic except Kafka's internal ones (``__…``),
    and wait until Metadata no longer lists them: the next test on a shared broker starts
    as on a new one.

    A group still listing members is emptied first: each member is sent off with a
    LeaveGroup in its name. The rule is that no client of the group is alive when this runs
    (workers are stopped or SIGKILLed before it): a member listed then is one a SIGKILLed
    process left behind, which Kafka would keep for its whole session timeout."""
    from aiokafka.protocol.admin import DeleteGroupsRequest

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        for group, *_ in await _list_groups(admin, deadline):
            while True:
                node = await admin.find_coordinator(group)
                response = await admin._send_request(DeleteGroupsRequest([group]), node)
                code = response.results[0][1]
                if code in (0, 69):  # done, or GROUP_ID_NOT_FOUND
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"group {group} not deleted (error {code}) in {timeout}s")
                if code == 68:  # NON_EMPTY_GROUP: members a SIGKILLed process left behind
                    await _send_off_members(admin, node, group)
                await asyncio.sleep(0.2)
        topics = [t for t in await admin.list_topics() if not t.startswith("__")]
        if topics:
            await admin.delete_topics(topics)
        while topics := [t for t in await admin.list_topics() if not t.startswith("__")]:
            if time.monotonic() > deadline:
                raise AssertionError(f"topics {topics} still listed {timeout}s after their deletion")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def _list_groups(admin: AIOKafkaAdminClient, deadline: float) -> list[tuple[str, str]]:
    """Every consumer group, waiting while a coordinator is not ready: right after a
    broker (re)start its coordinators load ``__consumer_offsets`` and answer
    GROUP_LOAD_IN_PROGRESS / COORDINATOR_NOT_AVAILABLE / NOT_COORDINATOR for a moment
    (seen in a clean-clone run: the test after one that restarted the broker errored)."""
    from aiokafka.errors import CoordinatorNotAvailableError, GroupLoadInProgressError, NotCoordinatorError

    while True:
        try:
            return list(await admin.list_consumer_groups())
        except (GroupLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"consumer groups not listed: {exc!r}") from exc
            await asyncio.sleep(0.2)


async def _send_off_members(admin: AIOKafkaAdminClient, node: int, group: str) -> None:
    """A LeaveGroup for every member ``group`` lists (classic protocol: any client may
    name a member id; the coordinator removes it at once instead of at its session's end)."""
    from aiokafka.protocol.admin import DescribeGroupsRequest
    from aiokafka.protocol.group import LeaveGroupRequest

    described = await admin._send_request(DescribeGroupsRequest([group]), node)
    for member in described.groups[0][5]:  # (error, id, state, protocol type, protocol, members)
        await admin._send_request(LeaveGroupRequest(group, member[0]), node)


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    """``topic``'s configuration as the broker reports it (DescribeConfigs)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [(error_code, error_message, _type, _name, entries)] = response.resources
        if error_code:
            raise AssertionError(f"DescribeConfigs {topic}: error {error_code} {error_message}")
        return {entry[0]: entry[1] for entry in entries}
    finally:
        await admin.close()
