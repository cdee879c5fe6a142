"""The checks of bench/chaos.py fail when they should — without a broker (fast).

tests/fault/test_chaos.py runs the scenarios; a check that can never fail would
make those runs pass whatever the engine does. Here each check is fed the broken
case it exists for: repeated effects over worker kills × BATCH_SIZE, a worker life
that commits nothing, a drain that stops while derived records still arrive, an
order without NotificationSent, reconcile's exit codes; under exactly_once a single
derived event seen twice (or missing) by a read_committed reader; a worker table that
differs from the reference model's in one order or one unit of stock.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from typing import Any

import pytest

from bench import chaos
from harness.gateway import GatewayStub
from harness.kafka import Consumed
from harness.reference import Reference


def gateway_with(calls: dict[str, list[float]]) -> GatewayStub:
    """A stub (not started) as if it had answered 200 to ``calls``: key → request times."""
    g = GatewayStub()
    for key, times in calls.items():
        g.requests[key] = g.accepted[key] = len(times)
        g.times[key] = list(times)
    return g


def sent(*keys: str) -> list[Consumed]:
    return [Consumed(chaos.SENT, 0, n, k.encode(), b"{}", {}, 0) for n, k in enumerate(keys)]


# -- duplicate budget ----------------------------------------------------------------------


def test_one_replayed_event_counts_once_though_it_repeats_its_call_and_its_notification():
    repeated, forgotten = chaos.repeated_effects({"a": [1.0, 2.0], "b": [1.0]}, Counter({"a": 2, "b": 1}))
    assert (repeated, forgotten) == (1, 0)
    # either kind alone counts too
    assert chaos.repeated_effects({"a": [1.0, 2.0, 3.0]}, Counter({"a": 1}))[0] == 2
    assert chaos.repeated_effects({"a": [1.0]}, Counter({"a": 3}))[0] == 2


def test_a_call_after_the_workers_memory_was_wiped_is_forgotten_not_repeated():
    wiped = [10.0]
    assert chaos.repeated_effects({"a": [1.0, 11.0]}, Counter({"a": 1}), wiped) == (0, 1)
    # a second call within the same memory is still a repeat
    assert chaos.repeated_effects({"a": [1.0, 2.0, 11.0]}, Counter({"a": 1}), wiped) == (1, 1)
    assert chaos.repeated_effects({"a": [11.0, 12.0]}, Counter(), wiped) == (1, 0)


def test_repeated_events_over_kills_times_batch_size_fail_the_scenario():
    calls = {f"k-{i}": [1.0, 2.0] for i in range(11)}
    result = chaos.Result("worker-kill-storm", worker_kills=2, batch_size=5)
    chaos.count_outcome(result, gateway_with(calls), set(calls), sent(*calls), [])
    assert (result.lost, result.gateway_duplicates, result.repeated, result.duplicate_budget) == (0, 11, 11, 10)
    assert result.over_budget and not result.ok
    assert "OVER BUDGET" in result.line()
    assert "FAILED: 11 repeated events, over the budget of 10" in chaos.table_row(result, "today")

    within = chaos.Result("worker-kill-storm", worker_kills=3, batch_size=5)
    chaos.count_outcome(within, gateway_with(calls), set(calls), sent(*calls), [])
    assert not within.over_budget and within.ok


def test_duplicate_notification_sent_records_count_against_the_budget_too():
    calls = {"a": [1.0], "b": [1.0]}
    result = chaos.Result("relay-kill", worker_kills=0)
    chaos.count_outcome(result, gateway_with(calls), set(calls), sent("a", "a", "b"), [])
    assert (result.gateway_duplicates, result.sent_duplicates, result.repeated) == (0, 1, 1)
    assert result.duplicate_budget == 0 and not result.ok  # no worker killed: nothing may repeat


def test_no_effect_no_notification_and_stray_calls_are_reported():
    result = chaos.Result("worker-kill-storm", worker_kills=1)
    g = gateway_with({"a": [1.0], "b": [1.0], "zz": [1.0]})
    chaos.count_outcome(result, g, {"a", "b", "c"}, sent("a"), [])
    assert result.lost == 1  # c: no gateway effect
    assert any("1 orders had a gateway effect but no NotificationSent" in c for c in result.failed_checks)
    assert any("gateway requests for keys that should have no effect" in c for c in result.failed_checks)
    assert not result.ok


def test_batch_size_is_the_workers_setting():
    w = chaos.WorkerProcess("kafka://x:1", chaos.ROOT / "nowhere", chaos.ROOT / "nowhere.log", batch_size="7")
    assert chaos.batch_size_of(w) == 7
    assert chaos.DEFAULT_BATCH_SIZE == 500


# -- committed offsets -----------------------------------------------------------------------


def test_a_worker_life_that_commits_nothing_fails():
    assert chaos.commit_progress([(200, 500), (700, 3000)], (3000, 3000)) == []
    failed = chaos.commit_progress([(200, 500), (200, 3000), (900, 3000)], (3000, 3000))
    assert len(failed) == 1 and "did not advance before kill 2: 200 → 200" in failed[0]
    first = chaos.commit_progress([(0, 400)], (400, 400))
    assert len(first) == 1 and "kill 1" in first[0]


def test_a_life_with_nothing_left_to_commit_is_not_blamed():
    assert chaos.commit_progress([(3000, 3000), (3000, 3000)], (3000, 3000)) == []


def test_anything_left_uncommitted_after_the_drain_fails():
    assert chaos.commit_progress([(100, 500)], (2999, 3000)) != []


# -- drained: a condition, repeated until nothing moved -------------------------------------


async def test_drained_waits_again_while_derived_records_keep_arriving(monkeypatch):
    ends = iter([{0: 5}, {0: 8}, {0: 9}, {0: 9}])  # each wait lets a derived record land
    waits: list[float] = []

    async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
        return next(ends)

    async def wait_consumed(bootstrap: str, topics, *, timeout: float) -> None:
        waits.append(timeout)

    monkeypatch.setattr(chaos, "end_offsets", end_offsets)
    monkeypatch.setattr(chaos, "wait_consumed", wait_consumed)
    assert await chaos.drained("b:1", ["t"], timeout=30) == 9
    assert len(waits) == 3


async def test_drained_fails_when_the_group_does_not_commit(monkeypatch):
    async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
        return {0: 5}

    async def wait_consumed(bootstrap: str, topics, *, timeout: float) -> None:
        raise AssertionError("t: committed {0: 3}, end {0: 5}")

    monkeypatch.setattr(chaos, "end_offsets", end_offsets)
    monkeypatch.setattr(chaos, "wait_consumed", wait_consumed)
    with pytest.raises(AssertionError, match="committed"):
        await chaos.drained("b:1", ["t"], timeout=1)


def test_every_topic_the_worker_reads_is_drained():
    from streams.registry import SERVICES

    for spec in SERVICES:
        assert set(spec.sources) <= set(chaos.WORKER_TOPICS)
        assert set(spec.retry_topics(3)) <= set(chaos.WORKER_TOPICS)


# -- eos-kill-storm: exactly one derived event per order, read_committed ---------------------


def derived(topic: str, *keys: str) -> list[Consumed]:
    return [Consumed(topic, 0, n, k.encode(), b"{}", {}, 0) for n, k in enumerate(keys)]


RESERVED, REJECTED = chaos.EOS_DERIVED[1], chaos.EOS_DERIVED[2]


def test_each_order_has_one_notification_and_one_inventory_answer():
    seen = {chaos.SENT: derived(chaos.SENT, "a", "b"), RESERVED: derived(RESERVED, "a"),
            REJECTED: derived(REJECTED, "b")}
    once = chaos.derived_once({"a", "b"}, seen)
    assert (once["lost"], once["repeated"], once["stray"]) == (set(), 0, 0)


def test_a_derived_event_seen_twice_is_repeated_and_a_missing_one_lost():
    seen = {chaos.SENT: derived(chaos.SENT, "a", "a", "b", "zz"), RESERVED: derived(RESERVED, "a", "c"),
            REJECTED: derived(REJECTED, "a")}
    once = chaos.derived_once({"a", "b", "c"}, seen)
    # a: NotificationSent twice, reserved *and* rejected (two inventory answers); b: no
    # inventory answer; c: no NotificationSent; zz: no order of the storm
    assert once["repeated"] == 2 and once["repeated_keys"] == ["a"]
    assert once["lost"] == {"b", "c"}
    assert once["stray"] == 1


def test_under_exactly_once_a_single_repeat_fails_whatever_the_kills():
    result = chaos.Result("eos-kill-storm", worker_kills=6, batch_size=500, exactly_once=True, repeated=1)
    assert result.duplicate_budget == 0 and result.over_budget and not result.ok
    assert "budget 0 (exactly_once: derived events read_committed)" in result.line()
    assert "read_committed reader under exactly_once" in result.line()
    row = chaos.table_row(result, "today")
    assert "FAILED: 1 repeated events, over the budget of 0" in row and "1 / 0 (exactly_once, read_committed)" in row
    assert len(chaos._split_row(row)) == len(chaos.COLUMNS)
    clean = chaos.Result("eos-kill-storm", worker_kills=6, batch_size=500, exactly_once=True)
    assert clean.ok


async def test_drained_committed_waits_while_the_group_is_behind_or_a_transaction_is_open(monkeypatch):
    behind = iter([{"t:0": -1}, {"t:0": 3}, {}, {}])  # open transaction, then 3 records past the offset
    ends = iter([{0: 9}, {0: 12}, {0: 12}])  # a derived record landed meanwhile

    async def committed_behind(bootstrap: str, topics) -> dict[str, int]:
        return next(behind)

    async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
        return next(ends)

    monkeypatch.setattr(chaos, "committed_behind", committed_behind)
    monkeypatch.setattr(chaos, "end_offsets", end_offsets)
    assert await chaos.drained_committed("b:1", ["t"], timeout=30, interval=0) == 12
    assert next(behind, None) is None  # asked until nothing was behind twice, the ends unchanged


async def test_drained_committed_fails_when_the_group_stays_behind(monkeypatch):
    async def committed_behind(bootstrap: str, topics) -> dict[str, int]:
        return {"t:0": 2}

    async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
        return {0: 5}

    monkeypatch.setattr(chaos, "committed_behind", committed_behind)
    monkeypatch.setattr(chaos, "end_offsets", end_offsets)
    with pytest.raises(AssertionError, match="not done"):
        await chaos.drained_committed("b:1", ["t"], timeout=0)


# -- reconcile exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_reconcile_clean_or_mismatches_is_an_answer(monkeypatch, code):
    monkeypatch.setattr(chaos.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, code, "3 orders checked: …\n", ""))
    assert chaos.reconcile_cli({}, "--sla", "0") == (code, "3 orders checked: …\n")


@pytest.mark.parametrize("code", [1, 2])
def test_reconcile_failure_raises(monkeypatch, code):
    monkeypatch.setattr(chaos.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, code, "", "worker unreachable"))
    with pytest.raises(RuntimeError, match=f"reconcile exited {code}"):
        chaos.reconcile_cli({}, "--sla", "0")


# -- the kill storms: the worker's tables against the reference model -----------------------

STORM = [("o-1", "sku-a"), ("o-2", "sku-b"), ("o-3", "sku-a")]


def storm_topics(orders: list[tuple[str, str]]) -> dict[str, list[Consumed]]:
    """What a kill storm leaves in its input topics: the stock seed (``set``) and the
    inventory service's own ``reserve`` commands on inventory.requests, each order's
    OrderCreated and OrderPaid (the storm's own records, :func:`chaos.lifecycle`)."""
    def records(topic: str, pairs: list[tuple[bytes, bytes]]) -> list[Consumed]:
        return [Consumed(topic, 0, n, k, v, {}, 0) for n, (k, v) in enumerate(pairs)]

    seed = [(sku.encode(), json.dumps({"kind": "set", "sku": sku, "qty": 10}).encode())
            for sku in sorted({sku for _, sku in orders})]
    own = [(sku.encode(), json.dumps({"kind": "reserve", "sku": sku, "qty": 1, "order_id": o, "reply_to": 0}).encode())
           for o, sku in orders]
    return {chaos.INVENTORY_REQUESTS: records(chaos.INVENTORY_REQUESTS, seed + own),
            chaos.CREATED: records(chaos.CREATED, [chaos.lifecycle(o, sku)[0] for o, sku in orders]),
            chaos.PAID: records(chaos.PAID, [chaos.lifecycle(o, sku)[1] for o, sku in orders])}


async def model_of(orders: list[tuple[str, str]]) -> tuple[Reference, dict[str, int]]:
    topics = storm_topics(orders)

    async def read(topic: str) -> list[Consumed]:
        return topics[topic]

    return await chaos.storm_model(read)


def worker_tables(orders: list[tuple[str, str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``GET /orders/{id}`` and ``GET /inventory/{sku}`` of a worker that did the storm
    right: each order NOTIFIED and RESERVED, its inventory event before its payment (an
    interleaving the model does not pick, which the contract allows), event ids of its own."""
    views = {o: {"order_id": o, "status": "NOTIFIED", "reservation": "RESERVED", "version": 4, "parked": [],
                 "history": [{"type": t, "event_id": f"{o}-{n}"} for n, t in enumerate(
                     ["OrderCreated", "InventoryReserved", "OrderPaid", "NotificationSent"])]}
             for o, _ in orders}
    skus = Counter(sku for _, sku in orders)
    return views, {sku: {"sku": sku, "available": 10 - n, "reserved": n} for sku, n in skus.items()}


async def test_the_model_fed_a_storms_records_agrees_with_a_worker_that_did_the_same():
    ref, fed = await model_of(STORM)
    # the inventory service's own reserve commands are not fed (the model would refuse them)
    assert fed == {chaos.INVENTORY_REQUESTS: 2, chaos.CREATED: 3, chaos.PAID: 3}
    assert ref.stock == {"sku-a": {"available": 8, "reserved": 2}, "sku-b": {"available": 9, "reserved": 1}}
    result = chaos.Result("eos-kill-storm", exactly_once=True)
    assert chaos.check_against_model(result, ref, fed, *worker_tables(STORM)) == []
    assert result.details["model_mismatches"] == 0 and (result.details["model_orders"], result.details["model_skus"]) == (3, 2)
    assert result.ok and "3 orders (GET /orders/{id}) and 2 SKUs" in result.notes[-1]


async def test_one_order_or_one_unit_of_stock_off_the_model_fails_the_storm():
    ref, fed = await model_of(STORM)
    views, stock = worker_tables(STORM)
    views["o-2"] = {**views["o-2"], "status": "PAID", "version": 3, "history": views["o-2"]["history"][:3]}
    views["o-3"] = 404  # the worker does not know the order
    stock["sku-a"] = {**stock["sku-a"], "available": 7, "reserved": 3}  # one unit more reserved
    views["o-9"] = {**views["o-1"], "order_id": "o-9"}  # an order the storm never produced
    result = chaos.Result("eos-kill-storm", exactly_once=True)
    mismatches = chaos.check_against_model(result, ref, fed, views, stock)
    assert [m.split(":")[0] for m in mismatches] == ["o-2", "o-2", "o-2", "o-3", "o-9", "stock sku-a"]
    assert "o-2: status worker 'PAID' vs model 'NOTIFIED'" in mismatches
    assert result.details["model_mismatches"] == 6 and not result.ok
    row = chaos.table_row(result, "today")
    assert "FAILED: 6 mismatches between the worker's tables and the reference model" in row
    assert "6 mismatches" in result.notes[-1]


# -- the document ------------------------------------------------------------------------------


def test_rows_of_an_older_layout_are_dropped_not_mixed_in():
    old = ("<!-- chaos-results:short -->\nLatest run: x.\n\n| a |\n|---|\n"
           "| `relay-kill` | d | 1 | **0** | 0 (0 + 0) | 0 | 1.0 | f | 2 | n |\n<!-- /chaos-results:short -->")
    assert chaos.parse_doc(old)["short"] == ("Latest run: x.", {})
    row = chaos.table_row(chaos.Result("relay-kill"), "d")
    assert len(chaos._split_row(row)) == len(chaos.COLUMNS)
    new = f"<!-- chaos-results:short -->\nLatest run: y.\n{row}\n<!-- /chaos-results:short -->"
    assert chaos.parse_doc(new)["short"] == ("Latest run: y.", {"relay-kill": row})
