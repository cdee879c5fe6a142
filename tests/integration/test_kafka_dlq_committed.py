"""The DLQ tools read committed letters only (issue 20, item 4): under
PROCESSING_GUARANTEE=exactly_once a batch's dead letters are written in its transaction,
and an aborted batch's letters are written again when the batch is read again — a reader
that saw the aborted copies would list, and redrive, each such letter twice."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from streams.ops import dlq

pytestmark = pytest.mark.kafka

TOPIC = "notifications.dlq"


async def test_a_dead_letter_of_an_aborted_transaction_is_never_listed(kafka):
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id="dlq-committed-test")
    await producer.start()
    try:
        for key, commit in ((b"o-aborted", False), (b"o-committed", True)):
            await producer.begin_transaction()
            await producer.send_and_wait(TOPIC, b"{}", key=key, headers=[("x-dlq-reason", b"max_attempts")])
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()
    letters = [d async for d in dlq.iter_dead_letters(kafka.bootstrap, "notifications")]
    assert [d.key for d in letters] == [b"o-committed"]
