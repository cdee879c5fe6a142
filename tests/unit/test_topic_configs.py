"""The configs the worker creates its topics with (streams.assembly): explicit retention for
retry and DLQ topics, and a min.insync.replicas that lets one replica of three be lost."""

from __future__ import annotations

from streams.settings import WorkerSettings
from streams.assembly import durability_config, topic_configs


def test_three_replicas_need_two_in_sync_and_one_replica_needs_one() -> None:
    assert durability_config(WorkerSettings(topic_replication_factor=3)) == {"min.insync.replicas": "2"}
    assert durability_config(WorkerSettings(topic_replication_factor=2)) == {"min.insync.replicas": "1"}
    assert durability_config(WorkerSettings()) == {"min.insync.replicas": "1"}


def test_retry_and_dlq_topics_have_their_own_retention_and_the_largest_record() -> None:
    retry, dlq = topic_configs(WorkerSettings(dlq_retention=86400, retry_retention=3600,
                                              max_message_bytes=2 * 1024 * 1024, topic_replication_factor=3))
    assert retry == {"retention.ms": "3600000", "cleanup.policy": "delete", "max.message.bytes": "2097152",
                     "min.insync.replicas": "2"}
    assert dlq == {**retry, "retention.ms": "86400000"}
