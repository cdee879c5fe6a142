"""The rule for time (streams.engine.streamtime): decisions use stream time per
partition, persisted with the state, moved on a quiet partition by the monotonic
clock — never by the wall clock across a restart. Explicit clocks throughout: a
"restart" is a new pipeline on the same store with a new wall and monotonic clock."""

from __future__ import annotations

import json

from agents.inventory import InventoryService
from agents.order_state import OrderStateService
from streams.engine import headers as H
from streams.engine.pipeline import Pipeline
from streams.engine.records import Record
from streams.engine.routing import RetryPolicy, due_at_ms
from streams.engine.streamtime import MAX_CLOCK_SKEW_MS, STREAM_TIME_KEY, ProcessClock, StreamTime
from streams.events import InventoryReserved, NotificationSent, OrderCreated, OrderPaid
from streams.metrics import Metrics
from streams.registry import INVENTORY_REQUESTS, topics_written
from agents.rpc import BestEffortCaller
from tables.inventory import StockCommand, decision_key
from tables.order_state import Incoming, expired_parked, new_state
from harness.events import created, notification_sent, paid
from streams.engine.testing import NOW, NOW_MS, Clock, FakePublisher, MemoryStore

DAY = 86_400
PARK_TIMEOUT = 300.0
TTL = 3_600.0
OURS = topics_written(1) | {"order-state-changelog", "inventory-stock-changelog", "inventory-orders-changelog"}


class Worker:
    """One worker life: a pipeline on ``store`` with its own wall and monotonic clocks."""

    def __init__(self, service, store: MemoryStore, publisher: FakePublisher, *, wall: float,
                 mono: float = 1_000.0) -> None:
        self.wall, self.mono = Clock(wall), Clock(mono)
        self.publisher = publisher
        self.pipeline = Pipeline(service, publisher=publisher, store=store, counts=Metrics(),
                                 policy=RetryPolicy((1.0,)), allowed=OURS.__contains__, ttl_ms=int(TTL * 1000),
                                 clock=self.wall, monotonic=self.mono, send_backoff=0.001)

    def elapse(self, seconds: float) -> None:
        self.wall.now += seconds
        self.mono.now += seconds


def order_state(store: MemoryStore, publisher: FakePublisher, wall: float) -> Worker:
    return Worker(OrderStateService(park_timeout=PARK_TIMEOUT), store, publisher, wall=wall)


def rec(topic: str, kv: tuple[bytes, bytes], ts_ms: int, offset: int = 0, partition: int = 0) -> Record:
    return Record(topic, partition, offset, kv[0], kv[1], ts_ms)


def dlq(publisher: FakePublisher, service: str = "order-state") -> list:
    return publisher.to(f"{service}.dlq")


# -- parked events across a restart with a stepped clock ------------------------------


async def test_parked_events_survive_a_restart_with_the_clock_stepped_either_way() -> None:
    """The issue's first fault: restarted with its clock 10 minutes ahead, a worker
    dead-lettered every parked OrderPaid at once ("waited 621.2 s")."""
    for step in (600, -600, 400 * DAY, -400 * DAY):
        publisher = FakePublisher()
        store = MemoryStore(publisher)
        first = order_state(store, publisher, NOW)
        await first.pipeline.process([rec(OrderPaid.topic(), paid("o-1"), NOW_MS)])  # parked
        first.elapse(20)
        await first.pipeline.maintain([0])
        second = order_state(store, publisher, NOW + 20 + step)  # restart, clock stepped
        await second.pipeline.maintain([0])
        second.elapse(60)
        await second.pipeline.maintain([0])
        assert dlq(publisher) == [], f"step {step}: dead-lettered early"
        # the replay: OrderPaid again is a duplicate, OrderCreated applies it
        await second.pipeline.process([rec(OrderPaid.topic(), paid("o-1"), NOW_MS, offset=1),
                                       rec(OrderCreated.topic(), created("o-1"), NOW_MS + 80_000, offset=2)])
        state = json.loads(store.table("order-state", 0)[b"o-1"])
        assert (state["status"], state["parked"]) == ("PAID", {}), f"step {step}"
        assert dlq(publisher) == [], f"step {step}"


async def test_a_parked_event_on_a_quiet_partition_times_out_by_the_monotonic_clock() -> None:
    """Nothing arrives on the partition after the event parked: the decision time moves
    with the monotonic clock, so the timeout comes PARK_TIMEOUT later — in this life
    and, after a restart, PARK_TIMEOUT after the restart at the latest."""
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    worker = order_state(store, publisher, NOW)
    await worker.pipeline.process([rec(OrderPaid.topic(), paid("o-1"), NOW_MS)])
    worker.mono.now += PARK_TIMEOUT - 1  # the wall clock stands still: it plays no part
    await worker.pipeline.maintain([0])
    assert dlq(publisher) == []
    worker.mono.now += 1
    await worker.pipeline.maintain([0])
    [letter] = dlq(publisher)
    assert dict(letter.headers)[H.DLQ_REASON] == b"out_of_order_timeout"

    # after a restart (the wall clock 400 days back), the quiet time counts from the restart
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    first = order_state(store, publisher, NOW)
    await first.pipeline.process([rec(OrderPaid.topic(), paid("o-2"), NOW_MS)])
    second = order_state(store, publisher, NOW - 400 * DAY)
    await second.pipeline.maintain([0])
    second.mono.now += PARK_TIMEOUT
    await second.pipeline.maintain([0])
    assert len(dlq(publisher)) == 1


async def test_stream_time_is_persisted_with_the_state_and_read_back() -> None:
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    first = order_state(store, publisher, NOW)
    await first.pipeline.process([rec(OrderCreated.topic(), created("o-1"), NOW_MS - 5_000)])
    assert store.table("order-state", 0)[STREAM_TIME_KEY] == str(NOW_MS - 5_000).encode()
    changelog = [m for m in publisher.sent if m.topic == "order-state-changelog" and m.key == STREAM_TIME_KEY]
    assert changelog, "the stream time goes to the changelog too (a wiped data dir recovers it)"
    second = order_state(store, publisher, NOW + 400 * DAY)
    await second.pipeline.maintain([0])
    assert second.pipeline.times.stream_time(0) == NOW_MS - 5_000
    assert second.pipeline.times.now(0) == NOW_MS - 5_000  # no quiet time yet in this life
    # the recovery index builder skips the stream-time key
    assert OrderStateService(park_timeout=1).index_entries(STREAM_TIME_KEY, b"1700000000000") == []


async def test_records_we_wrote_do_not_move_stream_time() -> None:
    """Derived records carry the clock of the worker that wrote them: one stamped
    400 days ahead must not expire anything."""
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    worker = order_state(store, publisher, NOW)
    await worker.pipeline.process([rec(OrderPaid.topic(), paid("o-1"), NOW_MS)])
    ahead = NOW_MS + 400 * DAY * 1000
    worker.wall.now = NOW + 400 * DAY  # the writer's clock (and ours) ahead: believed, yet ours
    await worker.pipeline.process([rec(NotificationSent.topic(), notification_sent("o-2"), ahead, offset=1)])
    assert worker.pipeline.times.stream_time(0) == NOW_MS
    await worker.pipeline.maintain([0])
    assert dlq(publisher) == []


# -- hostile timestamps ------------------------------------------------------------------


async def test_forged_future_timestamps_move_stream_time_by_at_most_the_skew_and_do_not_ratchet() -> None:
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    first = order_state(store, publisher, NOW)
    await first.pipeline.process([rec(OrderCreated.topic(), created("o-0"), NOW_MS)])
    worker = order_state(store, publisher, NOW)  # restarted: stream time loaded
    year_9999 = 253402214400000
    for i in range(10):
        await worker.pipeline.process([rec(OrderPaid.topic(), paid(f"o-{i + 1}"), year_9999, offset=i)])
    assert worker.pipeline.times.stream_time(0) == NOW_MS + MAX_CLOCK_SKEW_MS
    # with the wall clock 400 days behind, the anchor is the loaded stream time: the same
    worker = order_state(store, publisher, NOW - 400 * DAY)
    for i in range(10):
        await worker.pipeline.process([rec(OrderPaid.topic(), paid(f"p-{i}"), year_9999, offset=20 + i)])
    assert worker.pipeline.times.stream_time(0) <= NOW_MS + 2 * MAX_CLOCK_SKEW_MS
    # and true record times are believed although the wall clock is 400 days behind
    worker.mono.now += 200
    await worker.pipeline.process([rec(OrderPaid.topic(), paid("q"), NOW_MS + 200_000, offset=40)])
    assert worker.pipeline.times.stream_time(0) == NOW_MS + 200_000


def test_the_anchor_is_the_wall_clock_or_the_loaded_stream_time_moved_by_the_monotonic_clock() -> None:
    wall, mono = Clock(NOW - 400 * DAY), Clock(50.0)
    times = StreamTime(wall=wall, monotonic=mono)
    assert times.bound(0) == int(wall.now * 1000) + MAX_CLOCK_SKEW_MS  # nothing loaded: the wall clock
    times.load(0, str(NOW_MS).encode())
    mono.now += 10
    assert times.bound(0) == NOW_MS + 10_000 + MAX_CLOCK_SKEW_MS
    times.observe(0, NOW_MS + 60_000)  # records do not move the anchor
    assert times.bound(0) == NOW_MS + 10_000 + MAX_CLOCK_SKEW_MS
    assert times.believe(0, 0) == times.now(0)  # no timestamp: the decision time


def test_a_newer_stored_stream_time_is_taken_with_the_quiet_time_counted_from_then() -> None:
    """Another owner moved the partition's stream time meanwhile (a rebalance there and
    back): the quiet time this process counted before must not be added to it."""
    mono = Clock(0.0)
    times = StreamTime(wall=Clock(NOW), monotonic=mono)
    times.observe(0, NOW_MS)
    mono.now += 1_000
    times.load(0, str(NOW_MS + 900_000).encode())
    assert times.now(0) == NOW_MS + 900_000
    times.load(0, str(NOW_MS).encode())  # an older stored value changes nothing
    assert times.stream_time(0) == NOW_MS + 900_000


def test_the_process_clock_is_not_moved_by_a_wall_clock_step() -> None:
    wall, mono = Clock(NOW), Clock(7.0)
    clock = ProcessClock(wall, mono)
    wall.now += 400 * DAY
    mono.now += 2
    assert clock() == NOW + 2


# -- inventory decisions ------------------------------------------------------------------


def inventory(store: MemoryStore, publisher: FakePublisher, wall: float) -> Worker:
    service = InventoryService(BestEffortCaller(Metrics().rpc_calls, timeout=1, max_in_flight=1),
                               search_url="", decision_ttl=TTL)
    return Worker(service, store, publisher, wall=wall)


def reserve(order_id: str, ts_ms: int, offset: int) -> Record:
    cmd = StockCommand(kind="reserve", sku="s-1", qty=2, order_id=order_id, reply_to=0)
    return Record(INVENTORY_REQUESTS, 0, offset, b"s-1", cmd.model_dump_json(exclude_none=True).encode(), ts_ms)


async def test_inventory_decisions_outlive_a_restart_with_the_clock_400_days_ahead() -> None:
    """The issue: 400 days ahead, decisions expired at once and replayed OrderCreated
    reserved stock again."""
    for step in (400 * DAY, -400 * DAY, 600, -600):
        publisher = FakePublisher()
        store = MemoryStore(publisher)
        first = inventory(store, publisher, NOW)
        set_stock = StockCommand(kind="set", sku="s-1", qty=10)
        await first.pipeline.process([
            Record(OrderCreated.topic(), 0, 0, b"o-1", created("o-1")[1], NOW_MS),
            Record(INVENTORY_REQUESTS, 0, 0, b"s-1", set_stock.model_dump_json(exclude_none=True).encode(), NOW_MS),
            reserve("o-1", NOW_MS, 1)])
        stock = json.loads(store.table("inventory-stock", 0)[b"s-1"])
        assert stock == {"available": 8, "reserved": 2}
        second = inventory(store, publisher, NOW + step)
        second.elapse(30)
        await second.pipeline.maintain([0])
        assert decision_key("s-1", "o-1") in store.table("inventory-stock", 0), f"step {step}: expired"
        await second.pipeline.process([reserve("o-1", int((NOW + step) * 1000), 2)])  # written by the stepped worker
        await second.pipeline.maintain([0])
        await second.pipeline.process([reserve("o-1", NOW_MS, 3)])  # the replay
        assert json.loads(store.table("inventory-stock", 0)[b"s-1"]) == stock, f"step {step}: reserved twice"


async def test_inventory_decisions_expire_after_the_ttl_in_stream_time() -> None:
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    worker = inventory(store, publisher, NOW)
    await worker.pipeline.process([Record(OrderCreated.topic(), 0, 0, b"o-1", created("o-1")[1], NOW_MS),
                                   reserve("o-1", NOW_MS, 0)])
    later = NOW_MS + int(TTL * 1000)
    worker.wall.now += TTL  # the wall clock lets the records' time through; the monotonic one stands
    await worker.pipeline.process([Record(OrderCreated.topic(), 0, 1, b"o-2", created("o-2")[1], later - 1)])
    await worker.pipeline.maintain([0])
    assert decision_key("s-1", "o-1") in store.table("inventory-stock", 0)
    await worker.pipeline.process([Record(OrderCreated.topic(), 0, 2, b"o-3", created("o-3")[1], later)])
    await worker.pipeline.maintain([0])
    assert decision_key("s-1", "o-1") not in store.table("inventory-stock", 0)


# -- retry due times and the pure rules ------------------------------------------------


def test_a_retry_never_waits_longer_than_its_delay_after_now() -> None:
    """The record was written by a worker whose clock was up to the skew ahead of ours:
    it waits its tier's delay from now, not the delay plus the clocks' difference."""
    policy = RetryPolicy((5.0,))
    ahead = Record("notifications.retry.1", 0, 0, b"k", b"v", NOW_MS + 50_000,
                   {H.NOT_BEFORE: str(NOW_MS + 55_000).encode()})
    assert due_at_ms(ahead, 1, policy, NOW_MS) == NOW_MS + 5_000
    on_time = Record("notifications.retry.1", 0, 0, b"k", b"v", NOW_MS - 1_000)
    assert due_at_ms(on_time, 1, policy, NOW_MS) == NOW_MS + 4_000


def test_expired_parked_compares_the_given_time_with_the_parking_time() -> None:
    item = Incoming("OrderPaid", "e-1", None, OrderPaid.topic(), 0, 0, NOW_MS, "{}", parked_at_ms=NOW_MS)
    state = {**new_state("o-1"), "parked": {"OrderPaid": item.to_json()}}
    assert expired_parked(state, NOW_MS + 299_999, 300_000) == []
    assert expired_parked(state, NOW_MS + 300_000, 300_000) == [item]


def test_inventory_index_skips_the_stream_time_key() -> None:
    service = InventoryService(BestEffortCaller(Metrics().rpc_calls, timeout=1, max_in_flight=1),
                               search_url="", decision_ttl=TTL)
    assert service.index_entries(STREAM_TIME_KEY, b"1700000000000") == []
    assert InventoryReserved.topic() in OURS


# -- the dedup TTL sweep -------------------------------------------------------------------


async def test_the_dedup_sweep_runs_on_stream_time_moved_by_the_monotonic_clock_only() -> None:
    from agents.notifications import NotificationsService
    from tests.unit.fakes import FakeNotifier, paid_record

    publisher = FakePublisher()
    store = MemoryStore(publisher)
    worker = Worker(NotificationsService(FakeNotifier(None), concurrency=2), store, publisher, wall=NOW)
    await worker.pipeline.process([paid_record("o-1", timestamp_ms=NOW_MS)])
    worker.wall.now += 400 * DAY  # a wall-clock step sweeps nothing
    await worker.pipeline.maintain([0])
    assert b"o-1" in store.table("notifications-dedup", 0)
    worker.mono.now += TTL  # the partition stays quiet for DEDUP_TTL
    await worker.pipeline.maintain([0])
    assert b"o-1" not in store.table("notifications-dedup", 0)


async def test_a_partition_back_from_another_owner_takes_its_stream_time_before_any_timeout() -> None:
    """This worker owned the partition, another moved its stream time (records that lag
    the clock: it parked an event at their time), then it came back here: the first
    tick reads the stored stream time and counts the quiet time from then — it does not
    add the hour it was away to its own old stream time."""
    publisher = FakePublisher()
    store = MemoryStore(publisher)
    here = order_state(store, publisher, NOW)
    await here.pipeline.process([rec(OrderCreated.topic(), created("o-0"), NOW_MS)])
    other = order_state(store, publisher, NOW + 3_600)
    await other.pipeline.process([rec(OrderPaid.topic(), paid("o-1"), NOW_MS + 600_000, offset=1)])  # parked
    here.elapse(3_600)  # an hour away, and back
    await here.pipeline.maintain([0])
    assert dlq(publisher) == []
    assert here.pipeline.times.now(0) == NOW_MS + 600_000
