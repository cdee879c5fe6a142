"""agents.rpc.BestEffortCaller: deadline, bounded in flight, outcomes counted, no tasks left."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter

from agents.rpc import BestEffortCaller


def counter() -> Counter:
    return Counter("rpc_calls", "x", ["target", "outcome"], registry=CollectorRegistry())


def value(c: Counter, outcome: str) -> float:
    return c.labels("search", outcome)._value.get()


async def settled(caller: BestEffortCaller, timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` s) until every call the caller started has finished."""
    running = set(caller.in_flight)
    if running:
        _, pending = await asyncio.wait(running, timeout=timeout)
        assert not pending, f"{len(pending)} calls still running after {timeout} s"


async def test_hanging_calls_time_out_are_counted_and_leave_no_task():
    c = counter()
    caller = BestEffortCaller(c, timeout=0.05, max_in_flight=3)
    baseline = len(asyncio.all_tasks())
    hang = asyncio.Event()
    accepted = [caller.call("search", hang.wait) for _ in range(5)]
    assert accepted == [True, True, True, False, False]  # refused, not queued
    assert value(c, "refused") == 2
    await settled(caller)  # hang is never set: only the caller's 0.05 s deadline ends them
    assert value(c, "timeout") == 3
    assert caller.in_flight == set()
    assert len(asyncio.all_tasks()) == baseline


async def test_ok_and_error_outcomes_and_results_collected():
    c = counter()
    caller = BestEffortCaller(c, timeout=1, max_in_flight=10)

    async def ok() -> int:
        return 1

    async def boom() -> None:
        raise RuntimeError("search is down")

    caller.call("search", ok)
    caller.call("search", boom)
    await settled(caller)
    assert value(c, "ok") == 1 and value(c, "error") == 1
    assert caller.in_flight == set()


async def test_call_returns_at_once_while_the_call_runs():
    c = counter()
    caller = BestEffortCaller(c, timeout=5, max_in_flight=1)
    assert caller.call("search", lambda: asyncio.sleep(1)) is True
    [task] = caller.in_flight
    assert not task.done()  # the caller did not wait for it
    await caller.close()
    assert caller.in_flight == set()
