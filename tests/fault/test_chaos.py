"""The short chaos scenarios of ``python -m bench.chaos`` (bench/chaos.py): 0 lost,
repeated events within worker kills × BATCH_SIZE, and each scenario's own checks.

Each test runs one scenario function directly (its own embedded broker, real
worker / order-service processes, a gateway stub in this process) and prints its row.
No scenario waits for a quiet period: each ends on conditions (every expected
effect at the gateway, the outbox empty, the worker's group committed everything).
tests/fault/test_chaos_checks.py shows, without a broker, that the checks used here
fail when they should.
"""

from __future__ import annotations

import random

import pytest

from bench import chaos

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SIZES = chaos.SHORT


def report(result: chaos.Result) -> None:
    print("\n" + result.line())


def assert_within_budget(result: chaos.Result) -> None:
    """Repeated events (per key the larger of its gateway and NotificationSent repeats)
    at most worker kills × BATCH_SIZE; so, too, each kind of duplicate on its own —
    except the calls a broker restart made the worker forget (counted apart)."""
    budget = result.worker_kills * result.batch_size
    assert result.duplicate_budget == budget
    assert result.repeated <= budget, result.line()
    assert result.sent_duplicates <= budget, result.line()
    assert result.gateway_duplicates - result.forgotten <= budget, result.line()
    assert not result.over_budget


async def test_worker_kill_storm_loses_nothing_and_commits_in_every_life(tmp_path):
    result = await chaos.worker_kill_storm(SIZES, tmp_path, random.Random(1))
    report(result)
    d = result.details
    assert result.error is None
    assert result.faults_done == SIZES.storm_kills == result.worker_kills
    assert d["worker_starts"] == SIZES.storm_kills + 1
    assert result.produced == SIZES.storm_orders
    # 0 lost: a gateway effect, NOTIFIED on the worker and a NotificationSent for every order
    assert result.lost == 0, result.notes
    assert d["not_notified"] == 0 and d["no_sent"] == 0
    assert_within_budget(result)
    # The group's committed offsets of OrderPaid moved forward in every life of the worker.
    commits = [done for done, _ in d["commits_before_kills"]]
    assert len(commits) == SIZES.storm_kills
    assert all(b > a for a, b in zip([0, *commits], commits)), d["commits_before_kills"]
    assert d["commit_final"][0] == d["commit_final"][1] == SIZES.storm_orders
    assert result.dead_lettered == 0
    # the worker's tables equal the reference model's, every order and SKU compared
    assert (d["model_mismatches"], d["model_orders"], d["model_skus"]) == (0, SIZES.storm_orders, chaos.STORM_SKUS)
    assert result.failed_checks == []
    assert result.drain_seconds is not None
    assert result.ok


async def test_relay_kill_loses_nothing(tmp_path):
    result = await chaos.relay_kill(SIZES, tmp_path, random.Random(2))
    report(result)
    assert result.error is None
    assert result.faults_done == SIZES.relay_kills
    assert result.details["relay_starts"] == SIZES.relay_kills + 1
    assert result.produced == SIZES.relay_orders
    assert result.lost == 0, result.notes
    assert result.worker_kills == 0 and result.repeated == 0  # no worker killed: nothing may repeat
    assert_within_budget(result)
    assert result.failed_checks == []
    assert result.drain_seconds is not None
    assert result.ok


async def test_broker_restart_loses_nothing_after_reconcile(tmp_path):
    result = await chaos.broker_restart(SIZES, tmp_path, random.Random(3))
    report(result)
    d = result.details
    assert result.error is None
    assert result.faults_done == SIZES.restarts == result.worker_kills
    assert result.produced == SIZES.restart_orders
    # settled on conditions, not on quiet: whatever reached the new broker had its effect
    assert d["stranded"] == 0, result.failed_checks
    assert d["reconcile_exit"] in (chaos.RECONCILE_CLEAN, chaos.RECONCILE_MISMATCHES)
    if d["lost_before_reconcile"]:
        assert d["reconcile_exit"] == chaos.RECONCILE_MISMATCHES
    assert d["reconcile_again_exit"] == chaos.RECONCILE_CLEAN, result.failed_checks
    assert result.lost == 0, result.notes
    assert_within_budget(result)
    assert result.failed_checks == []
    assert result.drain_seconds is not None
    assert result.ok


async def test_poison_flood_dead_letters_each_poison_record_once(tmp_path):
    result = await chaos.poison_flood(SIZES, tmp_path, random.Random(4))
    report(result)
    d = result.details
    assert result.error is None
    assert result.produced == SIZES.poison_good
    assert result.lost == 0, result.notes
    assert result.worker_kills == 0 and result.repeated == 0
    assert_within_budget(result)
    assert d["poison"] == SIZES.poison_bad
    assert d["poison_missing"] == 0, result.failed_checks
    assert d["poison_twice"] == 0, result.failed_checks
    assert d["wrong_reason"] == 0, result.failed_checks
    assert d["dlq_unexpected"] == 0, result.failed_checks
    assert result.dead_lettered == SIZES.poison_bad
    assert d["good_not_once"] == 0, result.failed_checks
    assert result.failed_checks == []
    assert result.ok
