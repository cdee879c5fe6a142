"""The per-test reset of the session's Apache Kafka (``harness.kafka.reset_broker``, run by
the ``kafka`` fixture before every test on it).

The hazard: a test that SIGKILLs a worker leaves its member in the consumer group, and
Kafka keeps a member for its whole session timeout; the group cannot be deleted until then,
so the next test either waited that long or failed. The reset sends such members off
(LeaveGroup in their name) and deletes the group within its own deadline — here shorter
than the dead member's session timeout.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from harness.kafka import create_topic, reset_broker

pytestmark = pytest.mark.kafka

GROUP, TOPIC = "reset-dead-member", "t-reset-dead-member"
SESSION_S = 45
#: a member of GROUP that prints once it has its partitions, then waits to be killed
MEMBER = f"""
import asyncio, sys
from aiokafka import AIOKafkaConsumer

async def main():
    c = AIOKafkaConsumer({TOPIC!r}, bootstrap_servers=sys.argv[1], group_id={GROUP!r},
                         session_timeout_ms={SESSION_S * 1000}, heartbeat_interval_ms=1000)
    await c.start()
    while not c.assignment():
        await c.getmany(timeout_ms=200)
    print("assigned", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def groups(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [g for g, *_ in await admin.list_consumer_groups()]
    finally:
        await admin.close()


async def test_reset_deletes_a_group_a_sigkilled_member_left_before_its_session_ends(kafka):
    await create_topic(kafka.bootstrap, TOPIC, 1)
    member = subprocess.Popen([sys.executable, "-c", MEMBER, kafka.bootstrap], stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(member.stdout.readline), 60)
        assert line.strip() == "assigned", line
    finally:
        member.kill()  # no LeaveGroup: the member stays listed for SESSION_S
        member.wait(10)
    assert GROUP in await groups(kafka.bootstrap)

    await reset_broker(kafka.bootstrap, timeout=SESSION_S / 3)

    assert GROUP not in await groups(kafka.bootstrap)
