"""The services on an Apache Kafka that asks for credentials (issue 19, item 8).

One SASL_SSL (SCRAM-SHA-512) broker for the module, its certificate signed by a CA the
test makes, ACLs on (``allow.everyone.if.no.acl.found=false``): the worker, the relay
and the operator's commands each connect as their own user, with only the ACLs the
README's "Kafka security" section lists. A wrong password or an untrusted CA file is
one line naming the setting; a topic the worker's principal may not write is refused
by the broker and the event is dead-lettered, not retried forever.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest

from streams import registry
from streams.broker.kafka import KafkaSetupError
from streams.broker.ports import PortInUseError
from streams.events import EVENT_TYPES, NotificationSent, OrderPaid
from streams.assembly import APP_ID
from harness.events import paid
from harness.gateway import GatewayStub
from harness.orders import OrdersClient, OrdersProcess
from tests.support.secure_kafka import (
    CREATE, DENY, DESCRIBE, GROUP, LITERAL, PREFIXED, READ, TOPIC, TRANSACTIONAL_ID, WRITE, SecureKafka, committed,
    create_acls, create_topics, delete_acls, grant, read_all,
)
from harness.worker import ROOT, WorkerProcess

pytestmark = pytest.mark.kafka

PAID, SENT = OrderPaid.topic(), NotificationSent.topic()
TIERS = 3
SERVICES_TOPICS = {t for s in registry.SERVICES for t in s.sources} | registry.topics_written(TIERS)


def worker_acls() -> list:
    """The worker: read its sources and retry tiers, write what it derives, its retry
    tiers and DLQs; its changelogs and Faust's internal topics live under the app id's
    prefix; its consumer group is the app id."""
    acls: list = []
    for spec in registry.SERVICES:
        for t in spec.sources:
            acls += grant("worker", TOPIC, t, READ, DESCRIBE, CREATE)
        for t in (*spec.derived, *spec.retry_topics(TIERS), spec.dlq):
            acls += grant("worker", TOPIC, t, WRITE, DESCRIBE, CREATE)
        for t in spec.retry_topics(TIERS):
            acls += grant("worker", TOPIC, t, READ)
    acls += grant("worker", TOPIC, f"{APP_ID}-", READ, WRITE, DESCRIBE, CREATE, pattern=PREFIXED)
    acls += grant("worker", GROUP, APP_ID, READ)
    return acls


def relay_acls() -> list:
    """The relay: write the order events (the only ones the order service publishes)."""
    return grant("relay", TOPIC, "events.order.", WRITE, DESCRIBE, CREATE, pattern=PREFIXED)


def ops_acls() -> list:
    """``dlq ls|show|redrive``: read the DLQs, write and read the redrive ledgers, write
    the sources a letter is redriven to."""
    acls: list = []
    for spec in registry.SERVICES:
        acls += grant("ops", TOPIC, spec.dlq, READ, DESCRIBE)
        acls += grant("ops", TOPIC, spec.ledger, READ, WRITE, DESCRIBE, CREATE)
        for t in spec.sources:
            acls += grant("ops", TOPIC, t, WRITE, DESCRIBE)
    return acls


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory):
    kafka = SecureKafka(tmp_path_factory.mktemp("secure-kafka"), ("worker", "relay", "ops"))
    try:
        kafka.start()
    except (KafkaSetupError, PortInUseError) as exc:  # as conftest's kafka_session: one line, never a skip
        pytest.fail(f"Apache Kafka (SASL_SSL) could not start: {exc}", pytrace=False)
    try:
        asyncio.run(create_topics(kafka, SERVICES_TOPICS | {t.topic() for t in EVENT_TYPES}))
        asyncio.run(create_acls(kafka, worker_acls() + relay_acls() + ops_acls()))
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def stack(secure: SecureKafka, tmp_path_factory: pytest.TempPathFactory):
    """A gateway, a worker (user ``worker``), the order API and its relay (user ``relay``)."""
    tmp = tmp_path_factory.mktemp("stack")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gateway = asyncio.run_coroutine_threadsafe(GatewayStub().start(), loop).result(30)
    worker = WorkerProcess(secure.url, tmp / "data", tmp / "worker.log", notifier_url=gateway.url,
                           retry_delays="0.2,0.2,0.2", **secure.env("worker"))
    db = f"sqlite:///{tmp / 'orders.db'}"
    api = OrdersProcess("serve", tmp / "api.log", database_url=db, relay_enabled="false")
    relay = OrdersProcess("relay", tmp / "relay.log", database_url=db, **secure.env("relay"))
    try:
        worker.start()
        api.start()
        relay.start()
        api.wait_ready()
        relay.wait_ready()
        worker.wait_ready()
        yield {"gateway": gateway, "worker": worker, "api": api, "relay": relay, "db": db, "tmp": tmp}
    finally:
        for p in (relay, api, worker):
            p.stop()
        asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def pay_as_admin(secure: SecureKafka, ids: list[str]) -> None:
    """An OrderPaid per id, written by ``admin`` (as an upstream service would)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**secure.client_kwargs("admin"), acks="all")
    await producer.start()
    try:
        for i in ids:
            key, value = paid(i)
            await producer.send_and_wait(PAID, value, key)
    finally:
        await producer.stop()


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                          capture_output=True, text=True, timeout=timeout)


# -- exactly_once: a write the broker refuses (first: no other worker in the group yet) ------


async def test_under_exactly_once_a_topic_the_worker_may_not_write_dead_letters_the_event(secure, tmp_path):
    """As the at-least-once test below, under ``PROCESSING_GUARANTEE=exactly_once``: the
    broker refuses one derived topic. The refused send dooms its transaction (T4), so the
    dead letter cannot ride in it: the event must still reach the DLQ, committed, and the
    group move past it — not abort and re-read the same batch for ever."""
    txn = grant("worker", TRANSACTIONAL_ID, f"{APP_ID}-", WRITE, DESCRIBE, pattern=PREFIXED)
    deny = [(TOPIC, SENT, LITERAL, "User:worker", WRITE, DENY)]
    await create_acls(secure, txn + deny)
    gateway = await GatewayStub().start()
    worker = WorkerProcess(secure.url, tmp_path / "data", tmp_path / "worker.log", notifier_url=gateway.url,
                           services="notifications", processing_guarantee="exactly_once", **secure.env("worker"))
    try:
        await asyncio.to_thread(worker.start().wait_ready)
        ids = [f"eos-denied-{i}" for i in range(3)]
        await pay_as_admin(secure, ids)
        letters = await read_all(secure, registry.NOTIFICATIONS.dlq, isolation_level="read_committed", timeout=90,
                                 until=lambda r: {x.key.decode() for x in r} >= set(ids))
        mine = [x for x in letters if x.key.decode() in ids]
        assert sorted(x.key.decode() for x in mine) == sorted(ids), worker.tail()  # once each
        for letter in mine:
            headers = {k: v.decode() for k, v in letter.headers}
            assert "TopicAuthorizationFailed" in headers.get("x-error-message", ""), headers
        sent = await read_all(secure, SENT, isolation_level="read_committed", timeout=10, until=lambda r: True)
        assert not {x.key.decode() for x in sent} & set(ids)
    finally:
        worker.stop()
        await gateway.stop()
        await delete_acls(secure, txn + deny)


# -- the services, each as its own principal ----------------------------------------------


async def test_relay_and_worker_carry_orders_to_notifications_as_their_own_users(secure, stack):
    ids = await OrdersClient(stack["api"].url).many(5)
    sent = await read_all(secure, SENT, until=lambda r: {x.key.decode() for x in r} >= set(ids))
    assert {x.key.decode() for x in sent} == set(ids)
    assert len(stack["gateway"].accepted) >= len(ids)  # each order notified through the gateway
    # the relay wrote as `relay`: its principal has no right to read, so admin checks the topic
    paid_records = await read_all(secure, PAID, until=lambda r: {x.key.decode() for x in r} >= set(ids))
    assert {x.key.decode() for x in paid_records} >= set(ids)


async def test_dlq_commands_and_reconcile_connect_as_ops(secure, stack):
    env = secure.env("ops")
    ls = await asyncio.to_thread(run, ["-m", "faust", "-A", "streams", "dlq", "ls", "--json"], env)
    assert ls.returncode == 0, ls.stderr
    json.loads(ls.stdout)
    rec = await asyncio.to_thread(run, ["-m", "faust", "-A", "streams", "reconcile", "--json",
                                        "--worker-url", stack["worker"].url],
                                  {**env, "DATABASE_URL": stack["db"], "DATA_DIR": str(stack["tmp"] / "ops")})
    assert rec.returncode == 0, (rec.stdout, rec.stderr)
    assert json.loads(rec.stdout)["exit_code"] == 0


# -- wrong credentials: one line naming the setting --------------------------------------------

COMMANDS = {
    "worker": ["-m", "faust", "--quiet", "-A", "streams", "worker", "-l", "info"],
    "relay": ["-m", "orders", "relay"],
    "dlq-ls": ["-m", "faust", "-A", "streams", "dlq", "ls"],
}


def assert_one_line(result: subprocess.CompletedProcess[str], setting: str, secret: str) -> None:
    assert result.returncode != 0, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out[-3000:]
    assert secret not in out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and setting in lines[-1], result.stderr[-2000:]
    assert [line for line in lines if setting in line] == lines[-1:], result.stderr[-2000:]


@pytest.mark.parametrize("who", sorted(COMMANDS))
async def test_a_wrong_password_is_one_line_naming_the_setting(secure, tmp_path, who):
    user = {"worker": "worker", "relay": "relay", "dlq-ls": "ops"}[who]
    wrong = "not-the-password-" + secure.passwords[user][:4] + "x"
    env = {**secure.env(user, password=wrong), "DATA_DIR": str(tmp_path), "WEB_PORT": str(_free()),
           "RELAY_PORT": str(_free()), "DATABASE_URL": f"sqlite:///{tmp_path / 'o.db'}"}
    result = await asyncio.to_thread(run, COMMANDS[who], env)
    assert_one_line(result, "KAFKA_SASL_PASSWORD", wrong)


@pytest.mark.parametrize("who", sorted(COMMANDS))
async def test_an_untrusted_ca_is_one_line_naming_the_setting(secure, tmp_path, who):
    user = {"worker": "worker", "relay": "relay", "dlq-ls": "ops"}[who]
    assert secure.pki is not None
    env = {**secure.env(user, cafile=secure.pki.other_ca), "DATA_DIR": str(tmp_path), "WEB_PORT": str(_free()),
           "RELAY_PORT": str(_free()), "DATABASE_URL": f"sqlite:///{tmp_path / 'o.db'}"}
    result = await asyncio.to_thread(run, COMMANDS[who], env)
    assert_one_line(result, "KAFKA_SSL_CAFILE", secure.passwords[user])


def _free() -> int:
    from streams.broker import free_port

    return free_port()


# -- a write the broker refuses ----------------------------------------------------------------


async def test_a_topic_the_worker_may_not_write_dead_letters_the_event(secure, stack):
    """The broker, not the worker, says no: a DENY on one derived topic (as an operator
    who forgot an ACL). Each event whose NotificationSent is refused is dead-lettered
    (the refusal cannot pass by waiting), and the group moves past it."""
    deny = [(TOPIC, SENT, LITERAL, "User:worker", WRITE, DENY)]
    await create_acls(secure, deny)
    try:
        ids = [f"denied-{i}" for i in range(3)]
        await pay_as_admin(secure, ids)
        letters = await read_all(secure, registry.NOTIFICATIONS.dlq,
                                 until=lambda r: {x.key.decode() for x in r} >= set(ids))
        mine = [x for x in letters if x.key.decode() in ids]
        assert len(mine) == len(ids)  # once each, not once per retry tier
        for letter in mine:
            headers = {k: v.decode() for k, v in letter.headers}
            assert "TopicAuthorizationFailed" in headers.get("x-error-message", ""), headers
            assert headers["x-error-type"] == "UnknownDestination", headers
            assert headers["x-dlq-reason"] == "non_retryable", headers  # not after the retry tiers
        # ... and the worker's group has gone past them
        ends = await read_all(secure, PAID, until=lambda r: {x.key.decode() for x in r} >= set(ids))
        need = {p: 1 + max(x.offset for x in ends if x.partition == p) for p in {x.partition for x in ends}}

        async def caught_up() -> bool:
            done = await committed(secure, PAID, APP_ID)
            return all(done.get(p, 0) >= n for p, n in need.items())

        for _ in range(300):
            if await caught_up():
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"the worker's group did not move past the refused events: {need}")
    finally:
        await delete_acls(secure, deny)


# -- exactly_once without the transactional-id ACL ---------------------------------------------


async def test_exactly_once_without_the_transactional_id_acl_is_one_line(secure, tmp_path):
    """``PROCESSING_GUARANTEE=exactly_once`` needs WRITE on the transactional ids
    ``<APP_ID>-…`` (T1: one per input partition). The ``worker`` principal here has none
    (worker_acls above grants topics and the group only): the worker ends with one line
    naming the transactional id and what to grant, never a traceback or a hang."""
    env = {**secure.env("worker"), "DATA_DIR": str(tmp_path), "WEB_PORT": str(_free()),
           "PROCESSING_GUARANTEE": "exactly_once"}
    result = await asyncio.to_thread(run, COMMANDS["worker"], env)
    assert_one_line(result, "TransactionalId", secure.passwords["worker"])
    assert "PROCESSING_GUARANTEE" in result.stderr.splitlines()[-1]
