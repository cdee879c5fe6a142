"""The short chaos scenarios of ``python -m bench.chaos``: 0 lost in each (bench/chaos.py).

Each test runs one scenario function directly (its own embedded broker, real
worker / order-service processes, a gateway stub in this process) and prints its row.
"""

from __future__ import annotations

import random

import pytest

from bench import chaos

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SIZES = chaos.SHORT


def report(result: chaos.Result) -> None:
    print("\n" + result.line())


async def test_worker_kill_storm_loses_nothing(tmp_path):
    result = await chaos.worker_kill_storm(SIZES, tmp_path, random.Random(1))
    report(result)
    assert result.faults_done == SIZES.storm_kills
    assert result.details["worker_starts"] == SIZES.storm_kills + 1
    assert result.produced == SIZES.storm_events
    assert result.lost == 0, result.notes
    assert result.failed_checks == []
    assert result.drain_seconds is not None


async def test_relay_kill_loses_nothing(tmp_path):
    result = await chaos.relay_kill(SIZES, tmp_path, random.Random(2))
    report(result)
    assert result.faults_done == SIZES.relay_kills
    assert result.details["relay_starts"] == SIZES.relay_kills + 1
    assert result.produced == SIZES.relay_orders
    assert result.lost == 0, result.notes
    assert result.failed_checks == []
    assert result.drain_seconds is not None


async def test_broker_restart_loses_nothing_after_reconcile(tmp_path):
    result = await chaos.broker_restart(SIZES, tmp_path, random.Random(3))
    report(result)
    assert result.faults_done == SIZES.restarts
    assert result.produced == SIZES.restart_orders
    assert result.lost == 0, result.notes
    assert result.failed_checks == []
    assert result.drain_seconds is not None


async def test_poison_flood_dead_letters_each_poison_record_once(tmp_path):
    result = await chaos.poison_flood(SIZES, tmp_path, random.Random(4))
    report(result)
    d = result.details
    assert result.produced == SIZES.poison_good
    assert result.lost == 0, result.notes
    assert d["poison"] == SIZES.poison_bad
    assert d["poison_missing"] == 0, result.failed_checks
    assert d["poison_twice"] == 0, result.failed_checks
    assert d["wrong_reason"] == 0, result.failed_checks
    assert d["dlq_unexpected"] == 0, result.failed_checks
    assert result.dead_lettered == SIZES.poison_bad
    assert d["good_not_once"] == 0, result.failed_checks
    assert result.failed_checks == []
