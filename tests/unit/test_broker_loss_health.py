"""Health's broker-loss rule (issue 23, item 10): no answer from the broker for
``BROKER_LOSS_TIMEOUT`` is a problem /health names; an idle worker whose broker
answers the probe is healthy however long it idles; an answer clears it."""

from __future__ import annotations

import asyncio

import pytest

from streams.engine.health import Health, probe_timing, watch_broker
from streams.settings import WorkerSettings


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def broker_problems(health: Health) -> list[str]:
    return [p for p in health.problems(lag=0, stall_timeout=1e9, send_budget=1e9) if "Kafka broker" in p]


async def test_an_idle_worker_is_healthy_while_the_broker_answers_and_unhealthy_when_it_stops() -> None:
    now = [0.0]
    health = Health(clock=lambda: now[0], broker_loss_timeout=10.0)
    state = {"answering": True, "probes": 0}

    async def round_trip() -> None:
        state["probes"] += 1
        now[0] += 4.0  # the worker's clock moves 4 s per probe: 2.5 probes per timeout
        if not state["answering"]:
            await asyncio.Event().wait()  # a frozen broker: no answer, no error

    task = asyncio.create_task(watch_broker(health, round_trip, interval=0.001, attempt_timeout=0.05))
    try:
        await until(lambda: state["probes"] >= 10)  # 40 s of idling, four timeouts
        assert broker_problems(health) == []
        state["answering"] = False
        await until(lambda: broker_problems(health) != [])
        [problem] = broker_problems(health)
        assert "BROKER_LOSS_TIMEOUT=10" in problem and "no answer in 0.05s" in problem
        state["answering"] = True
        await until(lambda: broker_problems(health) == [])
    finally:
        task.cancel()


def test_a_broker_never_reached_since_start_is_a_problem_after_the_timeout() -> None:
    now = [100.0]
    health = Health(clock=lambda: now[0], broker_loss_timeout=30.0)
    now[0] += 30.0
    assert broker_problems(health) == []
    now[0] += 0.5
    health.broker_failed(ConnectionRefusedError("connect to 127.0.0.1:9092"))
    [problem] = broker_problems(health)
    assert "30s" in problem and "ConnectionRefusedError: connect to 127.0.0.1:9092" in problem


def test_several_probes_fit_in_the_timeout_and_each_gives_up_in_time() -> None:
    for timeout in (1.0, 3.0, 30.0, 60.0, 3600.0):
        interval, attempt = probe_timing(timeout)
        assert interval * 3 <= timeout and attempt <= max(1.0, timeout / 2)


def test_broker_loss_timeout_is_validated() -> None:
    assert WorkerSettings().broker_loss_timeout <= 60
    for bad in ("0", "-1", "nan", "1e9"):
        with pytest.raises(ValueError):
            WorkerSettings(broker_loss_timeout=bad)


def test_a_partition_without_a_leader_past_the_timeout_is_named_and_clears_itself() -> None:
    """A leader election shorter than BROKER_LOSS_TIMEOUT reports nothing (no flapping);
    one longer is named in /health's problems until the probe sees a leader again."""
    now = [0.0]
    health = Health(clock=lambda: now[0], broker_loss_timeout=10.0)

    def answer(at: float, leaderless: list[tuple[str, int]]) -> list[str]:
        """The probe's answer at ``at`` s; /health's problems then."""
        now[0] = at
        health.broker_answered()
        health.leaders_seen(leaderless)
        return health.problems(lag=0, stall_timeout=1e9, send_budget=1e9)

    assert answer(0, [("events.order.paid.v1", 0)]) == []
    assert answer(8, [("events.order.paid.v1", 0)]) == []
    assert answer(9, []) == []  # elected within the timeout
    assert answer(20, [("events.order.paid.v1", 0), ("order-state.dlq", 3)]) == []
    assert answer(29, [("events.order.paid.v1", 0), ("order-state.dlq", 3)]) == []
    [problem] = answer(31, [("events.order.paid.v1", 0), ("order-state.dlq", 3)])
    assert "2 partition(s) without a leader for up to 11s" in problem, problem
    assert "events.order.paid.v1[0], order-state.dlq[3]" in problem and "BROKER_LOSS_TIMEOUT=10" in problem
    [problem] = answer(32, [("order-state.dlq", 3)])
    assert "1 partition(s)" in problem and "order-state.dlq[3]" in problem
    assert answer(33, []) == []


async def test_the_probe_s_answer_carries_the_leaderless_partitions_to_health() -> None:
    now = [0.0]
    health = Health(clock=lambda: now[0], broker_loss_timeout=10.0)
    answers: asyncio.Queue[list[tuple[str, int]]] = asyncio.Queue()
    probes = [0]

    async def round_trip() -> list[tuple[str, int]]:
        answer = await answers.get()  # the broker answers when the test says
        probes[0] += 1
        now[0] += 4.0
        return answer

    task = asyncio.create_task(watch_broker(health, round_trip, interval=0.001, attempt_timeout=5.0))
    try:
        for _ in range(4):
            answers.put_nowait([("t", 1)])
        await until(lambda: probes[0] == 4 and answers.empty())
        await until(lambda: health.leaderless_since == {("t", 1): 4.0})
        assert "t[1]" in health.problems(lag=0, stall_timeout=1e9, send_budget=1e9)[0]  # 12 s > 10 s
        answers.put_nowait([])
        await until(lambda: health.leaderless_since == {})
        assert health.problems(lag=0, stall_timeout=1e9, send_budget=1e9) == []
    finally:
        task.cancel()
