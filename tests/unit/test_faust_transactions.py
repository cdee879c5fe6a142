"""The worker's side of exactly-once (streams.faust.transactions): the aiokafka names it
relies on, its error translation, the setting, and the refusal on Tansu."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError, ProducerFenced

from streams.engine.transactions import Fenced, ProducerDead
from streams.faust.transactions import AiokafkaTxnProducer, refuse_without_transactions
from streams.settings import WorkerSettings


async def test_the_private_aiokafka_names_it_uses_exist() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t")
    assert producer._sender.sender_task is None  # set by start()
    assert producer._txn_manager.is_fatal_error() is False
    assert callable(GroupCoordinator.request_rejoin)
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert consumer._isolation_level == "read_uncommitted"  # what compat's read_committed sets
    await producer.client.close()
    await consumer._client.close()


def _dead_sender(exc: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


@pytest.mark.parametrize(("sender_died_of", "raised", "expected"), [
    (None, ProducerFenced(), Fenced),                      # EndTxn / TxnOffsetCommit answered "fenced"
    (ProducerFenced(), AssertionError("Invalid state transition"), Fenced),  # FATAL after a fence
    (KafkaError("Unexpected error during batch delivery"), KafkaError("x"), ProducerDead),  # #1004 / #1098
    (None, ConnectionError("broker gone"), ConnectionError),  # abortable: the batch aborts
])
async def test_aiokafka_errors_become_the_engines(sender_died_of: BaseException | None, raised: BaseException,
                                                  expected: type) -> None:
    p = AiokafkaTxnProducer("t", bootstrap="127.0.0.1:1", client_kwargs={}, max_request_size=1 << 20)
    try:
        if sender_died_of is not None:
            p.client._sender._sender_task = _dead_sender(sender_died_of)

        async def failing() -> None:
            raise raised

        with pytest.raises(expected):
            await p._call(failing())
        if sender_died_of is not None:  # a dead producer is not asked to abort: it would assert
            with pytest.raises((Fenced, ProducerDead)):
                await p.abort()
    finally:
        p.client._sender._sender_task = None
        await p.client.client.close()


def test_processing_guarantee_defaults_to_at_least_once_and_takes_exactly_once() -> None:
    assert WorkerSettings().processing_guarantee == "at_least_once"
    assert WorkerSettings(processing_guarantee="exactly_once").processing_guarantee == "exactly_once"
    with pytest.raises(ValueError):
        WorkerSettings(processing_guarantee="at_most_once")


async def test_exactly_once_on_tansu_stops_start_up_with_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    started: list[str] = []

    async def first_start() -> None:
        started.append("clients")

    async def tansu() -> bool:
        return True

    app = SimpleNamespace(on_first_start=first_start)
    refuse_without_transactions(app, tansu)
    with pytest.raises(SystemExit) as exit_:
        await app.on_first_start()
    assert exit_.value.code == 1 and started == []
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PROCESSING_GUARANTEE=exactly_once" in err[0] and "Tansu" in err[0]

    async def kafka() -> bool:
        return False

    app = SimpleNamespace(on_first_start=first_start)
    refuse_without_transactions(app, kafka)
    await app.on_first_start()
    assert started == ["clients"]


def test_faust_does_not_take_processing_guarantee_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust reads PROCESSING_GUARANTEE from the environment and lets it win over the App's
    arguments: the worker's exactly_once once switched on Faust's own exactly_once too (a
    worker joining a group then crashed in recovery on ``int(None)``)."""
    from streams.assembly import create_app

    monkeypatch.setenv("PROCESSING_GUARANTEE", "exactly_once")
    app = create_app(WorkerSettings())
    assert app.worker.driver.transactions is not None  # the engine's exactly-once
    assert str(app.conf.processing_guarantee.value) == "at_least_once"  # and not Faust's own
