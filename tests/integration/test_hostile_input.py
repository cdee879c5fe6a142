"""Trust boundaries (issue 12): each reproduction of "What was found", as a hostile or
careless producer would do it, against the embedded broker and a real worker.

Each test is named after what it guards and asserts the safe behaviour: no crash, no
stall, nothing written to a topic outside :mod:`streams.registry` (no
``notifications.retry.-1`` / ``.0``), dead letters with the right reason, ``/health``,
exit codes, masked and escaped output. (The order service's input bounds and the
settings' masking are in ``tests/unit/test_hostile_*.py``.)
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import time
import uuid
import warnings
from collections import Counter

import pytest

from streams.events import NotificationSent, OrderCancelled, OrderCreated, OrderPaid
from streams.engine.keys import key_partition
from harness.events import cancelled, created, paid
from tests.support.hostile import (
    Gateway, broker_topics, changelog, faust_cli, foreign_topics, health, listening,
    non_loopback_address, wait_caught_up, wait_for,
)
from harness.kafka import create_topic, produce, read_topic, wait_consumed
from harness.worker import HealthProbe, WorkerProcess, http_get, metric_value

pytestmark = pytest.mark.kafka

PAID, CREATED, SENT = OrderPaid.topic(), OrderCreated.topic(), NotificationSent.topic()
CANCELLED = OrderCancelled.topic()
N_DLQ, S_DLQ, I_DLQ = "notifications.dlq", "order-state.dlq", "inventory.dlq"
#: RETRY_DELAYS of the workers that retry here: two fast tiers.
DELAYS = "0.2,0.2"
TIERS = 2
N_RETRY = [f"notifications.retry.{n}" for n in range(1, TIERS + 1)]
#: 9999-12-31T23:59:59Z in epoch milliseconds.
YEAR_9999_MS = 253_402_300_799_000


@pytest.fixture(scope="module")
def shared(module_broker, tmp_path_factory):
    """One broker and one worker with the default web settings, for the tests that only
    read what the worker does with their own orders (saves a worker start each); these
    tests come last in this module (``module_broker``'s rule)."""
    broker = module_broker
    where = tmp_path_factory.mktemp("shared")
    worker = WorkerProcess(broker.url, where / "data", where / "worker.log",
                           retry_delays=DELAYS, maintenance_interval="0.2")
    try:
        worker.start().wait_ready()
        yield broker, worker
    finally:
        worker.stop(timeout=20)  # leaves the group (the broker may be the session's Kafka)
        worker.kill()


async def started(worker_factory, name: str = "w1", **env: str):
    worker = worker_factory(name, **{"retry_delays": DELAYS, "maintenance_interval": "0.2", **env})
    await asyncio.to_thread(worker.start().wait_ready)
    return worker


async def assert_registry_topics_only(bootstrap: str, tiers: int = TIERS) -> None:
    topics = await broker_topics(bootstrap)
    assert not foreign_topics(topics, tiers), sorted(foreign_topics(topics, tiers))


def headers_of(record) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers.items()}


def by_key(records) -> dict[bytes | None, list]:
    out: dict[bytes | None, list] = {}
    for r in records:
        out.setdefault(r.key, []).append(r)
    return out


def still_running(worker) -> None:
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()


def healthy_throughout(probe: HealthProbe) -> None:
    assert probe.answers, "no /health answer at all"
    assert not probe.failures(), probe.failures()[:3]


# ---------------------------------------------------------------------------------------
# Worker input: retry and DLQ headers on source records are someone else's data


async def test_forged_x_attempt_on_source_records_is_ignored(broker, worker_factory):
    """x-attempt -2 once sent a retry to an auto-created ``notifications.retry.-1``;
    -1 stalled every service (and SIGTERM); -4 crashed the fetcher, also after a restart
    (the record was never committed: here every record is, and the worker stays up)."""
    forged = {"m2": b"-2", "m1": b"-1", "m4": b"-4", "big": b"99999999999999999999", "nan": b"\xff-x"}
    async with Gateway() as gateway:
        worker = await started(worker_factory, notifier_url=gateway.url, notifier_timeout="2")
        with HealthProbe(worker.url) as probe:
            for name, attempt in forged.items():
                hdrs = [("x-attempt", attempt), ("x-source-topic", b"notifications.retry.-1"),
                        ("x-not-before", str(YEAR_9999_MS).encode())]
                await produce(broker.bootstrap, PAID, [paid(f"fail-{name}"), paid(f"ok-{name}")], headers=hdrs)
            dead = await read_topic(broker.bootstrap, N_DLQ, expect=len(forged), timeout=60)
            # No stall: an event produced after them is processed too.
            await produce(broker.bootstrap, PAID, [paid("after-1")])
            sent = await read_topic(broker.bootstrap, SENT, until=lambda rs: b"after-1" in {r.key for r in rs})
            await wait_consumed(broker.bootstrap, [PAID, *N_RETRY])

        healthy_throughout(probe)
        still_running(worker)
        letters = by_key(dead)
        for name in forged:
            [letter] = letters[f"fail-{name}".encode()]
            h = headers_of(letter)
            assert h["x-dlq-reason"] == "max_attempts", (name, h)
            assert h["x-attempt"] == str(TIERS + 1), (name, h)
            assert h["x-source-topic"] == PAID, (name, h)
            assert gateway.requests[f"fail-{name}"] == TIERS + 1, name  # the ladder ran, from 1
            assert gateway.accepted[f"ok-{name}"] == 1, name
        for tier, topic in enumerate(N_RETRY, start=1):
            retried = by_key(await read_topic(broker.bootstrap, topic))
            for name in forged:
                assert [headers_of(r)["x-attempt"] for r in retried[f"fail-{name}".encode()]] == [str(tier)]
        assert Counter(r.key for r in sent) == Counter([f"ok-{n}".encode() for n in forged] + [b"after-1"])
        await assert_registry_topics_only(broker.bootstrap)

        # SIGTERM is honoured promptly (it was ignored for over 40 s).
        await asyncio.to_thread(worker.stop, 20)
        assert worker.proc.returncode == 0, worker.tail()


async def test_forged_x_source_partition_never_chooses_a_partition(broker, worker_factory):
    """x-source-partition 999 on an invalid value once looped AssertionError('Unrecognized
    partition') and stalled the worker (also after a restart: the record was never
    committed)."""
    worker = await started(worker_factory)
    forged = [("x-source-partition", b"999"), ("x-source-topic", PAID.encode()), ("x-source-offset", b"-7"),
              ("x-attempt", b"1")]
    with HealthProbe(worker.url) as probe:
        await produce(broker.bootstrap, PAID, [(b"bad-src", b"{not json")], headers=forged, partition=1)
        # On the service's own retry topic the headers are ours, and still checked.
        await produce(broker.bootstrap, N_RETRY[0], [(b"bad-retry", b"{not json")], headers=forged, partition=0)
        await produce(broker.bootstrap, N_RETRY[0], [paid("ok-retry")], headers=forged, partition=2)
        await produce(broker.bootstrap, PAID, [paid("after-1")])
        dead = await read_topic(broker.bootstrap, N_DLQ, expect=2)
        sent = await read_topic(broker.bootstrap, SENT, expect=2)
        await wait_consumed(broker.bootstrap, [PAID, *N_RETRY])
    healthy_throughout(probe)
    still_running(worker)

    # A record on a partition its key does not map to is first sent on to the key's
    # partition (x-rerouted-from says where it arrived) and processed there: the
    # header never chooses, the key does.
    letters = {r.key: headers_of(r) for r in dead}
    home = {k: str(key_partition(k, 4)) for k in (b"bad-src", b"bad-retry", b"ok-retry")}
    assert letters[b"bad-src"]["x-dlq-reason"] == "decode_error"
    assert letters[b"bad-src"]["x-source-partition"] == home[b"bad-src"]
    assert letters[b"bad-src"]["x-attempt"] == "1"
    assert letters[b"bad-retry"]["x-dlq-reason"] == "decode_error"
    assert letters[b"bad-retry"]["x-source-partition"] == home[b"bad-retry"]
    assert {str(r.partition) for r in dead if r.key == b"bad-src"} == {home[b"bad-src"]}
    if home[b"bad-src"] != "1":
        assert letters[b"bad-src"]["x-rerouted-from"].startswith("1:")
    assert {r.key for r in sent} == {b"ok-retry", b"after-1"}
    assert [str(r.partition) for r in sent if r.key == b"ok-retry"] == [home[b"ok-retry"]]
    assert {r.key for r in await read_topic(broker.bootstrap, S_DLQ, expect=1)} == {b"bad-src"}
    await assert_registry_topics_only(broker.bootstrap)


async def test_a_forged_not_before_cannot_park_a_retry_partition(broker, worker_factory):
    """``x-not-before`` (or the broker timestamp it falls back to) in year 9999 on a
    retry record (found by the fuzzer): the record must run at most the tier's delay
    after it arrived, and the partition's later retries with it."""
    worker = await started(worker_factory)
    ours = [("x-source-topic", PAID.encode()), ("x-attempt", b"1")]
    with HealthProbe(worker.url) as probe:
        await produce(broker.bootstrap, N_RETRY[0], [paid("nb-header"), paid("nb-header-next")], partition=0,
                      headers=[*ours, ("x-not-before", str(YEAR_9999_MS).encode())])
        await produce(broker.bootstrap, N_RETRY[0], [paid("nb-timestamp"), paid("nb-timestamp-next")], partition=1,
                      headers=ours, timestamp_ms=YEAR_9999_MS)
        await wait_caught_up(broker.bootstrap, [PAID, *N_RETRY], stall=8, timeout=40)
    healthy_throughout(probe)
    sent = {r.key for r in await read_topic(broker.bootstrap, SENT, expect=4)}
    assert sent == {b"nb-header", b"nb-header-next", b"nb-timestamp", b"nb-timestamp-next"}, sent
    still_running(worker)


async def test_dlq_redrive_publishes_only_to_the_letters_own_service_sources(broker, worker_factory, tmp_path):
    """A dead letter with a spoofed ``x-source-topic: inventory.requests`` whose body is
    a stock command was once redriven there by ``dlq redrive --service notifications``:
    the SKU's stock went from 94 to 424242."""
    worker = await started(worker_factory)
    (tmp_path / "stock.json").write_text(json.dumps({"s-1": 94}))
    seeded = await asyncio.to_thread(faust_cli, broker.url, "seed-stock", str(tmp_path / "stock.json"))
    assert seeded.returncode == 0, seeded.stderr

    async def stock() -> dict:
        status, body = await asyncio.to_thread(http_get, f"{worker.url}/inventory/s-1")
        return json.loads(body) if status == 200 else {}

    async def seeded_94() -> bool:
        return (await stock()).get("available") == 94

    await wait_for(seeded_94, what="stock seeded")
    command = json.dumps({"kind": "set", "sku": "s-1", "qty": 424242}).encode()
    spoofed = [("x-source-topic", b"inventory.requests"), ("x-dlq-reason", b"max_attempts"),
               ("x-attempt", b"3"), ("x-source-partition", b"0"), ("x-source-offset", b"0")]
    # A letter written straight into the DLQ, and one the worker dead-letters itself.
    await produce(broker.bootstrap, N_DLQ, [(b"s-1", command)], headers=spoofed)
    await produce(broker.bootstrap, PAID, [(b"s-1", command)], headers=spoofed)
    letters = await read_topic(broker.bootstrap, N_DLQ, expect=2)
    own = [r for r in letters if headers_of(r).get("x-dlq-reason") == "validation_error"]
    assert len(own) == 1 and headers_of(own[0])["x-source-topic"] == PAID, [headers_of(r) for r in letters]

    result = await asyncio.to_thread(faust_cli, broker.url, "dlq", "redrive", "--service", "notifications", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["services"]["notifications"]["redriven"] == 1, report
    assert report["services"]["notifications"]["refused"] == 1, report
    targets = {o["action"]: o.get("target") for o in report["letters"]}
    assert targets == {"redriven": PAID, "refused": None}, report

    await wait_consumed(broker.bootstrap, [PAID, "inventory.requests", "inventory.answers"])
    requests = await read_topic(broker.bootstrap, "inventory.requests")
    assert not [r for r in requests if b"424242" in (r.value or b"")], "a stock command reached inventory.requests"
    assert (await stock())["available"] == 94
    await assert_registry_topics_only(broker.bootstrap, tiers=TIERS)
    still_running(worker)


async def test_null_header_values_neither_stall_nor_crash_the_worker(broker, worker_factory):
    """Kafka lets a producer send a header with a null value (found by the fuzzer): the
    worker must process or dead-letter such records like any other, and keep going."""
    worker = await started(worker_factory)
    nulls = [("x-attempt", None), ("traceparent", None), ("x-source-topic", None)]
    with HealthProbe(worker.url) as probe:
        await produce(broker.bootstrap, PAID, [paid("o-null-1"), (b"bad-null", b"{not json")], headers=nulls)
        await produce(broker.bootstrap, N_RETRY[0], [paid("o-null-2")], headers=nulls)
        await produce(broker.bootstrap, PAID, [paid("after-1")])
        await wait_caught_up(broker.bootstrap, [PAID, *N_RETRY], stall=10, timeout=40)
    healthy_throughout(probe)
    still_running(worker)
    sent = {r.key for r in await read_topic(broker.bootstrap, SENT, expect=2)}
    assert {b"o-null-1", b"after-1"} <= sent, sent
    letters = {r.key: headers_of(r) for r in await read_topic(broker.bootstrap, N_DLQ, expect=2)}
    assert letters[b"bad-null"]["x-dlq-reason"] == "decode_error", letters
    assert letters[b"o-null-2"]["x-dlq-reason"] == "validation_error", letters  # a retry naming no source
    assert "traceparent" in letters[b"bad-null"]  # other people's headers travel on, null or not
    await assert_registry_topics_only(broker.bootstrap)


# ---------------------------------------------------------------------------------------
# Bounded state and messages


def padded_paid(order_id: str, size: int) -> tuple[bytes, bytes]:
    """A valid OrderPaid of about ``size`` bytes (JSON whitespace), with its own event id."""
    key, value = paid(order_id, event_id=str(uuid.uuid4()))
    return key, value[:-1] + b" " * max(0, size - len(value)) + b"}"


async def test_large_out_of_order_events_cannot_grow_an_order_state(broker, worker_factory):
    """Four 5 MB OrderPaid with different event ids and no OrderCreated once became one
    20 MB changelog record: MessageSizeTooLargeError, the worker exited and crash-looped."""
    worker = await started(worker_factory)
    with HealthProbe(worker.url) as probe:
        await produce(broker.bootstrap, PAID, [padded_paid("big-1", 5 * 1024 * 1024) for _ in range(4)])
        mids = [padded_paid("mid-1", 10 * 1024) for _ in range(4)]
        await produce(broker.bootstrap, PAID, mids)
        await read_topic(broker.bootstrap, S_DLQ, expect=4)
        await wait_consumed(broker.bootstrap, [PAID])
        dead = await read_topic(broker.bootstrap, S_DLQ)
    healthy_throughout(probe)
    still_running(worker)

    assert [(r.key, headers_of(r)["x-dlq-reason"]) for r in dead] == [(b"big-1", "too_large")] * 4
    status, body = await asyncio.to_thread(http_get, f"{worker.url}/orders/mid-1")
    assert status == 200, body
    view = json.loads(body)
    assert sorted(p["type"] for p in view["parked"]) == ["NotificationSent", "OrderPaid"], view  # one of each
    [parked_paid] = [p for p in view["parked"] if p["type"] == "OrderPaid"]
    assert parked_paid["event_id"] == json.loads(mids[0][1])["event_id"]  # the first stays; later ones are duplicates
    state_log = await read_topic(broker.bootstrap, changelog("order-state"))
    assert state_log and max(len(r.value or b"") for r in state_log) <= 64 * 1024, \
        max(len(r.value or b"") for r in state_log)
    sent = await read_topic(broker.bootstrap, SENT, expect=2)
    assert Counter(r.key for r in sent) == {b"big-1": 1, b"mid-1": 1}

    # The parked event still applies once its predecessor comes; a restart is clean.
    await produce(broker.bootstrap, CREATED, [created("mid-1")])
    await wait_consumed(broker.bootstrap, [CREATED])

    async def notified() -> bool:
        status, body = await asyncio.to_thread(http_get, f"{worker.url}/orders/mid-1")
        return status == 200 and json.loads(body)["status"] == "NOTIFIED"

    await wait_for(notified, timeout=30, what="mid-1 NOTIFIED")
    await asyncio.to_thread(worker.stop, 20)
    await asyncio.to_thread(worker.start().wait_ready)
    still_running(worker)
    await assert_registry_topics_only(broker.bootstrap)


# ---------------------------------------------------------------------------------------
# Event time cannot be forged forward


async def test_a_future_timestamp_cannot_expire_dedup_markers(broker, worker_factory):
    """One OrderPaid stamped 9999-12-31 once made the next TTL sweep delete the
    partition's dedup markers; replayed events were processed again (duplicate SMS)."""
    async with Gateway() as gateway:
        # DEDUP_SWEEP_INTERVAL: the sweep period of the engine before this one (60 s by
        # default, longer than this test); today's engine sweeps every 0.2 s and ignores it.
        # PARK_TIMEOUT=1: the probe below (a parked OrderCancelled) times out on a tick.
        worker = await started(worker_factory, notifier_url=gateway.url, dedup_ttl="3600",
                               dedup_sweep_interval="0.2", park_timeout="1")
        orders = [paid(f"o-{i}") for i in range(20)]
        for partition in range(4):
            await produce(broker.bootstrap, PAID, orders[partition::4], partition=partition)
        await wait_consumed(broker.bootstrap, [PAID])
        for partition in range(4):  # the forged time on every partition: broker timestamp and occurred_at
            await produce(broker.bootstrap, PAID, [paid(f"future-{partition}", occurred_at="9999-12-31T23:59:59Z")],
                          partition=partition, timestamp_ms=YEAR_9999_MS)
        await wait_consumed(broker.bootstrap, [PAID])
        # The TTL sweep runs on every maintenance tick (MAINTENANCE_INTERVAL 0.2 s), and
        # removes nothing here, which leaves nothing to see. So a probe shows a tick has
        # run since the forged records were processed: an OrderCancelled of an order
        # never created parks in order-state, and only a tick can time it out (after
        # PARK_TIMEOUT, 1 s ≥ 5 ticks). Each tick runs every service's maintenance,
        # notifications' sweep included; so when the probe is dead-lettered, the sweep
        # has run at least once with the forged watermark (this tick or the one before).
        await produce(broker.bootstrap, CANCELLED, [cancelled("probe")])
        await wait_consumed(broker.bootstrap, [CANCELLED])

        async def probe_timed_out() -> bool:
            text = await asyncio.to_thread(worker.metrics)
            return metric_value(text, "event_processed_total", service="order-state",
                                type="OrderCancelled", status="dead_letter") >= 1

        await wait_for(probe_timed_out, timeout=30, what="a maintenance tick after the forged records")
        text = await asyncio.to_thread(worker.metrics)
        assert metric_value(text, "dedup_keys_expired_total") == 0
        for partition in range(4):  # the replay
            await produce(broker.bootstrap, PAID, orders[partition::4], partition=partition)
        await wait_consumed(broker.bootstrap, [PAID])

        assert {k: n for k, n in gateway.requests.items() if n != 1} == {}
        assert len(gateway.requests) == 24
        sent = await read_topic(broker.bootstrap, SENT, expect=24)
        assert sorted(Counter(r.key for r in sent).values()) == [1] * 24
        text = await asyncio.to_thread(worker.metrics)
        assert metric_value(text, "event_processed_total", service="notifications", status="duplicate") == 20
        still_running(worker)


async def test_an_old_timestamp_cannot_get_an_event_processed_twice(broker, worker_factory):
    """Backwards too (found by the fuzzer): a copy of an OrderPaid stamped older than
    DEDUP_TTL, processed first, left a marker that the next copy of the same order —
    stamped now — counted as expired: the SMS went out twice."""
    async with Gateway() as gateway:
        worker = await started(worker_factory, notifier_url=gateway.url, dedup_ttl="3600")
        two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
        for partition in range(4):
            await produce(broker.bootstrap, PAID, [paid(f"old-{partition}")], partition=partition,
                          timestamp_ms=two_hours_ago)
        await wait_consumed(broker.bootstrap, [PAID])
        for partition in range(4):  # the same events again, stamped by the producer now
            await produce(broker.bootstrap, PAID, [paid(f"old-{partition}")], partition=partition)
        await wait_consumed(broker.bootstrap, [PAID])
        assert dict(gateway.accepted) == {f"old-{p}": 1 for p in range(4)}, dict(gateway.accepted)
        sent = await read_topic(broker.bootstrap, SENT, expect=4)
        assert Counter(r.key for r in sent) == Counter({f"old-{p}".encode(): 1 for p in range(4)})
        still_running(worker)


async def test_a_copy_on_another_partition_is_not_processed_twice(broker, worker_factory):
    """The partition is the producer's choice too (found by the fuzzer): the same OrderPaid
    written to a partition its key does not map to was processed again there — its dedup
    markers live with the key's own partition. (Whether such a record is refused,
    re-routed or deduplicated is the product's choice; a second SMS is not.)"""
    async with Gateway() as gateway:
        worker = await started(worker_factory, notifier_url=gateway.url)
        key, value = paid("o-moved")
        home = key_partition(key, 4)
        await produce(broker.bootstrap, PAID, [(key, value)], partition=home)
        await wait_consumed(broker.bootstrap, [PAID])
        await produce(broker.bootstrap, PAID, [(key, value)], partition=(home + 1) % 4)
        await wait_consumed(broker.bootstrap, [PAID])
        assert dict(gateway.accepted) == {"o-moved": 1}, dict(gateway.accepted)
        sent = await read_topic(broker.bootstrap, SENT, expect=1)
        assert [r.key for r in sent] == [b"o-moved"]
        still_running(worker)


# ---------------------------------------------------------------------------------------
# Ids from outside


async def test_order_ids_with_control_characters_or_10000_chars_are_validation_errors(broker, worker_factory):
    """A control character in an order id made the HTTP client refuse the header on every
    retry (max_attempts in the end); a 10,000-character id reached the gateway (400)."""
    bad_ids = ["o-\r\nX-Injected: 1", "o-\x1b[31mred", "o-\x00nul", "o-\u202eevil", "o-" + "9" * 9998, " o-1"]
    async with Gateway() as gateway:
        worker = await started(worker_factory, notifier_url=gateway.url)
        with HealthProbe(worker.url) as probe:
            await produce(broker.bootstrap, PAID, [paid(i) for i in bad_ids] + [paid("good-1")])
            dead = await read_topic(broker.bootstrap, N_DLQ, expect=len(bad_ids))
            await wait_consumed(broker.bootstrap, [PAID, *N_RETRY])
        healthy_throughout(probe)
        letters = {r.key: headers_of(r) for r in dead}
        assert set(letters) == {i.encode() for i in bad_ids}
        for key, h in letters.items():
            assert (h["x-dlq-reason"], h["x-attempt"]) == ("validation_error", "1"), (key[:40], h)
        assert dict(gateway.requests) == {"good-1": 1}
        assert await read_topic(broker.bootstrap, N_RETRY[0]) == []
        order_state = {r.key: headers_of(r)["x-dlq-reason"] for r in await read_topic(
            broker.bootstrap, S_DLQ, expect=len(bad_ids))}
        assert order_state == {i.encode(): "validation_error" for i in bad_ids}
        # The views refuse such ids with 400 rather than looking them up.
        for bad in ("o-%1b%5b31m", "o-" + "9" * 300, "%00"):
            assert (await asyncio.to_thread(http_get, f"{worker.url}/orders/{bad}"))[0] == 400, bad
        still_running(worker)
        await assert_registry_topics_only(broker.bootstrap)


# ---------------------------------------------------------------------------------------
# Web and operations


async def test_web_token_guards_every_route_but_health_and_metrics(broker, worker_factory):
    """With WEB_TOKEN set, nothing asked for credentials."""
    token = "t0ken-" + uuid.uuid4().hex
    worker = await started(worker_factory, web_token=token)
    await produce(broker.bootstrap, PAID, [paid("o-1")])
    await wait_consumed(broker.bootstrap, [PAID])

    def get(path: str, auth: str | None = None) -> tuple[int, str]:
        """(status, Location) — redirects not followed."""
        conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": auth} if auth else {})
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("Location") or ""
        finally:
            conn.close()

    def asks_for_credentials(answer: tuple[int, str]) -> bool:
        """401, or (a console page, for a browser) a redirect to the sign-in form."""
        status, location = answer
        return status == 401 or (status in (302, 303) and location.startswith("/console/login"))

    guarded = ["/orders/o-1", "/inventory/s-1", "/console", "/console/dlq", "/console/orders/o-1", "/",
               "/table/order-state/o-1/"]
    for path in guarded:
        for auth in (None, "Bearer wrong-" + token, token, "Basic " + token):  # none, wrong, not a bearer token
            answer = await asyncio.to_thread(get, path, auth)
            assert asks_for_credentials(answer), (path, auth and auth[:12], answer)
    assert (await asyncio.to_thread(get, "/orders/o-1", f"Bearer {token}"))[0] == 200
    assert (await asyncio.to_thread(get, "/console", f"Bearer {token}"))[0] == 200
    assert (await asyncio.to_thread(get, "/health"))[0] == 200
    assert (await asyncio.to_thread(get, "/metrics"))[0] == 200


#: Characters a terminal acts on: C0 controls but newline, DEL, C1 controls, bidi overrides.
TERMINAL_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


async def test_dlq_show_and_ls_escape_what_a_letter_carries(broker):
    """``dlq show`` wrote a dead letter's escape sequences raw to the terminal."""
    hostile = b"\x1b]0;pwned\x07\x1b[2J\x9b31m\xe2\x80\xae\r"
    await create_topic(broker.bootstrap, N_DLQ, 1)
    letter = [("x-source-topic", PAID.encode() + hostile), ("x-dlq-reason", b"max_attempts" + hostile),
              ("x-attempt", b"3" + hostile), ("x-error-message", b"boom" + hostile),
              ("x-error-type", hostile), (hostile.decode("utf-8", "replace"), hostile)]
    await produce(broker.bootstrap, N_DLQ, [(b"k" + hostile, b'{"v": 1}' + hostile),
                                            (b"\xff\xfe" + hostile, b"\x00\xff" + hostile)],
                  headers=letter, partition=0)
    for args in (["dlq", "show", f"{N_DLQ}:0:0", f"{N_DLQ}:0:1"], ["dlq", "show", f"{N_DLQ}:0:0", "--full"],
                 ["dlq", "ls"], ["dlq", "show", f"{N_DLQ}:0:0", "--json"], ["dlq", "ls", "--json"],
                 ["dlq", "redrive", "--dry-run"]):
        result = await asyncio.to_thread(faust_cli, broker.url, *args)
        assert result.returncode == 0, (args, result.stderr)
        for stream in (result.stdout, result.stderr):
            found = TERMINAL_CONTROLS.findall(stream)
            assert not found, (args, found[:5])
    missing = await asyncio.to_thread(faust_cli, broker.url, "dlq", "show", f"{N_DLQ}:0:99")
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1, missing.stderr


async def test_health_reports_a_stalled_worker(broker, worker_factory):
    """``/health`` could not tell a stalled worker (every service stuck) from a working one."""
    async with Gateway() as gateway:
        worker = await started(worker_factory, notifier_url=gateway.url, notifier_timeout="300",
                               stall_timeout="2")
        await produce(broker.bootstrap, PAID, [paid("stall-1")])
        await produce(broker.bootstrap, PAID, [paid(f"o-{i}") for i in range(5)])

        async def unhealthy() -> bool:
            status, _ = await asyncio.to_thread(health, worker.url)
            return status == 503

        await wait_for(unhealthy, timeout=30, what="/health 503 while stalled")
        status, body = await asyncio.to_thread(health, worker.url)
        assert status == 503 and b"no batch committed" in body, body
        assert gateway.held == 1
        gateway.release()

        async def healthy() -> bool:
            return (await asyncio.to_thread(health, worker.url))[0] == 200

        await wait_for(healthy, timeout=30, what="/health 200 once it moves again")
        sent = await read_topic(broker.bootstrap, SENT, expect=6)
        assert len({r.key for r in sent}) == 6
        still_running(worker)


# ---------------------------------------------------------------------------------------
# On the shared worker (last in the file: it runs until the module ends)


async def test_order_created_with_many_skus_fans_out_without_item_lists(shared):
    """One order of 1,000 SKUs once became 104 MB across the inventory topics: each
    per-SKU command and answer carried the whole item list."""
    broker, worker = shared
    many = [{"sku": f"sku-{i:04d}-{'x' * 100}", "qty": 1} for i in range(100)]  # the most an order may have
    await produce(broker.bootstrap, CREATED, [created("wide-1", items=many)])
    await produce(broker.bootstrap, CREATED, [created("huge-1", items=[{"sku": f"s-{i}", "qty": 1}
                                                                       for i in range(1000)])])
    stages = [CREATED, "inventory.requests", "inventory.answers"]
    await read_topic(broker.bootstrap, "events.inventory.rejected.v1",
                     until=lambda rs: b"wide-1" in {r.key for r in rs})
    await wait_consumed(broker.bootstrap, stages)
    requests = [r for r in await read_topic(broker.bootstrap, "inventory.requests") if b'"wide-1"' in r.value]
    answers = [r for r in await read_topic(broker.bootstrap, "inventory.answers") if r.key == b"wide-1"]
    assert len(requests) == 100 and max(len(r.value) for r in requests) < 1024
    expects = [r for r in answers if b'"expect"' in r.value]
    assert len(expects) == 1 and len(answers) == 101
    assert max(len(r.value) for r in answers if r not in expects) < 1024
    assert sum(len(r.value) for r in requests + answers) < 200 * 1024
    dead = {r.key: headers_of(r)["x-dlq-reason"] for r in await read_topic(broker.bootstrap, I_DLQ, expect=1)}
    assert dead == {b"huge-1": "validation_error"}
    still_running(worker)
    await assert_registry_topics_only(broker.bootstrap)


async def test_worker_web_server_binds_web_host_only(shared):
    """The web server listened on 0.0.0.0 although WEB_HOST defaults to 127.0.0.1."""
    _, worker = shared
    assert listening(worker.port) == {"127.0.0.1"}, listening(worker.port)
    # Another address of this host must not reach it. 127.0.0.2 is always one (Linux
    # routes all of 127.0.0.0/8 to lo): a listener on 0.0.0.0 or :: answers there, one
    # on 127.0.0.1 does not. A non-loopback address, when the host has one, as well;
    # without one (a bare container) that half is said in the output, not skipped silently.
    others = ["127.0.0.2"]
    found = non_loopback_address()
    if found is None:
        warnings.warn("no non-loopback address on this host: WEB_HOST checked against 127.0.0.2 only")
    else:
        others.append(found)
    for other in others:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((other, worker.port)) != 0, f"reachable on {other}:{worker.port}"


async def test_generic_table_views_are_off_and_views_show_no_raw_bytes_or_headers(shared):
    """Faust's /table/ views returned parked events raw (base64 payload, user id, amount,
    every header — an ``authorization`` header echoed) and every order of a SKU."""
    broker, worker = shared
    secret = b"Bearer sekrit-7f3a"
    await produce(broker.bootstrap, PAID, [paid("o-park", user_id="u-secret-user", amount="31337.77")],
                  headers=[("authorization", secret), ("cookie", b"session=sekrit-cookie")])
    await produce(broker.bootstrap, CREATED, [created("o-sku", items=[{"sku": "s-9", "qty": 1}])])
    await wait_consumed(broker.bootstrap, [PAID, CREATED, "inventory.requests", "inventory.answers"])
    for path in ("/table/", "/table/order-state/", "/table/order-state/o-park/", "/table/inventory-stock/s-9/",
                 "/router/", "/router/order-state/o-park/"):
        status, body = await asyncio.to_thread(http_get, worker.url + path)
        assert status == 404, (path, status, body[:200])
        assert b"sekrit" not in body and b"31337.77" not in body, path
    status, body = await asyncio.to_thread(http_get, f"{worker.url}/orders/o-park")
    assert status == 200, body
    view = json.loads(body)
    assert {"order_id", "status", "reservation", "version", "history"} <= set(view)
    for leak in (b"sekrit", b"authorization", b"u-secret-user", b"31337.77", b"c2Vrcml0"):  # c2Vrcml0: base64 "sekrit"
        assert leak not in body, leak
    status, body = await asyncio.to_thread(http_get, f"{worker.url}/inventory/s-9")
    assert status in (200, 404), body
    if status == 200:
        assert set(json.loads(body)) == {"sku", "available", "reserved"}, body
    assert b"o-sku" not in body
