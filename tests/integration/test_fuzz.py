"""A seeded property-based fuzzer of the worker's input (issue 12).

2,000 records with random keys, values and headers — ours (``x-attempt``,
``x-not-before``, ``x-source-topic/partition/offset``, ``x-dlq-reason`` … with hostile
values) and other people's arbitrary ones — are generated with hypothesis strategies
(derandomized: the same 2,000 records on every run, digest printed) and produced, among
good events (a valid ``OrderCreated`` and ``OrderPaid`` for each of 200 distinct order
ids), to the worker's source topics and its retry topics. The broker and the worker run
once. Then:

- every record is accounted for: per service, the outcomes in ``/metrics``
  (``event_processed_total``: success, duplicate, retry, dead_letter, parked — a parked
  event is counted once more when it is applied or dead-lettered) equal the records in
  the topics it reads (its sources and its own retry tiers; a topic read by two
  services counts for both; records the worker derived or retried count too);
- every good event is processed once: one ``NotificationSent`` and one SMS per good
  ``OrderPaid``, the order ``NOTIFIED`` at ``GET /orders/{id}``, one inventory result;
- no record is written to a topic outside :mod:`streams.registry` (the broker's topics
  are the registry's, their changelogs and Faust's own);
- the worker is healthy throughout (``GET /health`` 200 on every poll after ready).

The counts (records, outcomes by kind) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from streams import registry
from streams.events import (
    ID_PATTERN, InventoryRejected, InventoryReserved, NotificationSent, OrderCancelled, OrderCreated, OrderPaid,
)
from streams.faust.compat import read_any_header_key
from harness.events import created, paid
from tests.support.hostile import (
    Gateway, broker_topics, foreign_topics, python_record_builder, raw_header_names, samples,
    wait_caught_up, wait_for,
)
from harness.kafka import end_offsets, read_topic
from harness.worker import HealthProbe, http_get, metric_value

pytestmark = pytest.mark.kafka

# This test's own readers meet the hostile header keys too (on topics the worker writes
# nothing to, and the good events' topics): they read them as the worker does.
read_any_header_key()

RECORDS = 2000
GOOD = 200
TIERS = 2
DELAYS = "0.2,0.2"
PARK_TIMEOUT = 4.0
PARTITIONS = 4
#: 9999-12-31T23:59:59Z in epoch milliseconds.
YEAR_9999_MS = 253_402_300_799_000

PAID, CREATED, CANCELLED, SENT = OrderPaid.topic(), OrderCreated.topic(), OrderCancelled.topic(), NotificationSent.topic()
RESERVED, REJECTED = InventoryReserved.topic(), InventoryRejected.topic()
REQUESTS, ANSWERS = registry.INVENTORY_REQUESTS, registry.INVENTORY_ANSWERS
SOURCES = (PAID, CREATED, CANCELLED, SENT, REQUESTS, ANSWERS)
RETRIES = tuple(t for s in registry.SERVICES for t in s.retry_topics(TIERS))
FUZZ_TOPICS = SOURCES + RETRIES

OURS = ("x-attempt", "x-not-before", "x-source-topic", "x-source-partition", "x-source-offset", "x-error-type",
        "x-error-message", "x-first-failed-at", "x-failed-at", "x-dlq-reason", "x-redriven-from",
        "x-original-size", "x-original-sha256")
THEIRS = ("authorization", "cookie", "traceparent", "content-type", "", "X-ATTEMPT", "x-attempt ")
HOSTILE_NUMBERS = ("-4", "-2", "-1", "0", "1", "2", "3", "4", "999", "-999999", "99999999999999999999",
                   "1e309", "NaN", "", " 1", "0x10", "\u0663", "1.5", str(YEAR_9999_MS), str(2**63))
TOPIC_NAMES = (*sorted(registry.topics_written(TIERS)), *SOURCES, "notifications.retry.-1", "notifications.retry.0",
               "notifications.retry.99", "inventory.requests", "__consumer_offsets", "x" * 300, "", "events.order.paid.v2")
SKUS = ("s-0", "s-1", "s-2", "s-3", "s-4")


# ---------------------------------------------------------------------------------------
# Strategies


@dataclass(frozen=True)
class Hostile:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    partition: int | None
    #: ``none`` (the producer's time), ``zero``, ``old``, ``future``, ``y9999``
    timestamp: str
    #: what the value was drawn as (printed)
    kind: str


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


#: header keys Kafka carries that are not UTF-8 (a str name is sent as its UTF-8 bytes)
raw_names = st.binary(min_size=1, max_size=12).filter(_not_utf8)
header_names = st.one_of(st.sampled_from(OURS), st.sampled_from(THEIRS), st.text(max_size=16), raw_names)
header_values = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS).map(str.encode),
    st.sampled_from(TOPIC_NAMES).map(str.encode),
    st.integers(-(2**64), 2**64).map(lambda n: str(n).encode()),
    st.binary(max_size=48),
    st.text(max_size=48).map(encode),
    st.none(),
    st.just(b"z" * 20_000),
    st.just(b"Z" * 1_100_000),  # past the worker's producer limit: its dead letter must be shrunk
)
headers_strategy = st.one_of(
    st.lists(st.tuples(header_names, header_values), max_size=8).map(tuple),
    # one name repeated (Kafka keeps every one; so must a dead letter)
    st.tuples(st.sampled_from(THEIRS), st.lists(header_values, min_size=2, max_size=4)).map(
        lambda nv: tuple((nv[0], v) for v in nv[1])),
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,24}", fullmatch=True).filter(lambda s: not s.startswith("good-"))
#: Well-formed ids the gateway fails (503: the retry ladder) or rejects (400).
failing_ids = st.one_of(st.integers(0, 10**6).map(lambda n: f"fail-{n}"),
                        st.integers(0, 10**6).map(lambda n: f"reject-{n}"))
valid_ids = st.one_of(ids, failing_ids)
hostile_ids = st.one_of(
    valid_ids,
    st.text(max_size=24),
    st.text(alphabet=st.characters(max_codepoint=0x9F), min_size=1, max_size=12).map(lambda s: "h-" + s),
    st.integers(129, 300).map(lambda n: "L" * n),
    st.just("o-" + "9" * 9998),
    st.just("K" * 1_100_000),  # a key past the worker's producer limit
)
amounts = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=2).map(str),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.none(),
)
times = st.one_of(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc))
    .map(lambda d: d.isoformat()),
    st.just("9999-12-31T23:59:59Z"),
    st.text(max_size=12),
)
items = st.lists(st.fixed_dictionaries({"sku": st.one_of(st.sampled_from(SKUS), ids, st.text(max_size=8)),
                                        "qty": st.one_of(st.integers(1, 5), st.integers(-5, 10**7))}),
                 min_size=0, max_size=6)
versions = st.sampled_from(["v1", "v1", "v1", "v2", 1, None])


#: Field strategies of event-shaped values (the order id is the record's).
FIELDS: dict[str, st.SearchStrategy] = {
    "user_id": st.one_of(ids, hostile_ids), "amount": amounts, "items": items, "reason": st.text(max_size=20),
    "channel": st.sampled_from(["sms", "log", "fax"]), "causation_id": st.one_of(st.uuids().map(str), st.text(max_size=8)),
    "kind": st.sampled_from(["reserve", "release", "set", "expect", "answer", "explode"]),
    "sku": st.one_of(st.sampled_from(SKUS), ids), "qty": st.integers(-5, 2 * 10**9),
    "reply_to": st.one_of(st.integers(0, 100_000), st.integers(-5, -1), st.none()),
    "decision": st.sampled_from(["reserved", "rejected", "released", "maybe"]),
}

#: The fields each message type has, for event-shaped values.
SHAPES = {
    "OrderPaid": ("order_id", "user_id", "amount"),
    "OrderCreated": ("order_id", "user_id", "items", "amount"),
    "OrderCancelled": ("order_id", "reason"),
    "NotificationSent": ("order_id", "user_id", "channel", "causation_id"),
    "InventoryReserved": ("order_id", "items", "causation_id"),
    "StockCommand": ("kind", "sku", "qty", "order_id", "reply_to"),
    "SkuAnswer": ("kind", "order_id", "sku", "qty", "decision"),
    "Expected": ("kind", "order_id", "items", "causation_id"),
}
SHAPE_NAMES = sorted(SHAPES)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_trees = st.recursive(json_leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=4), max_leaves=12)
valid_items = st.lists(st.fixed_dictionaries({"sku": st.sampled_from(SKUS), "qty": st.integers(1, 3)}),
                       min_size=1, max_size=3, unique_by=lambda i: i["sku"])
valid_amounts = st.decimals(min_value=0, max_value=1000, places=2).map(str)
valid_times = st.sampled_from([None, None, "9999-12-31T23:59:59Z", "1970-01-02T00:00:00Z", "2026-06-01T12:00:00Z"])
#: What a record's value is drawn as, weighted by repetition.
KINDS = (["binary"] * 6 + ["null"] * 3 + ["json"] * 4 + ["big"] + ["shaped"] * 9 + ["valid"] * 10 + ["failing"] * 2
         + ["replay"] * 5)


# Every strategy a record is drawn from is built once, here (one built per draw was
# most of the generation time).
uuids = st.uuids().map(str)
shapes = st.sampled_from(SHAPE_NAMES)
stock_kinds = st.sampled_from(["reserve", "release", "set"])
decisions = st.sampled_from(["reserved", "rejected", "released"])
stock_qty = st.integers(0, 50)
reply_to = st.one_of(st.none(), st.integers(0, 100_000))
topics = st.sampled_from(FUZZ_TOPICS)
kinds = st.sampled_from(KINDS)
binaries = st.binary(max_size=300)
nulls = st.sampled_from([None, b"", b"null", b"{}", b"[]", b'""', b"0"])
fillers = st.sampled_from([b"x", b" ", b"\x00"])
big_sizes = st.integers(50_000, 600_000)
pad_sizes = st.integers(17_000, 100_000)
one_in_10 = st.integers(0, 9)
one_in_5 = st.integers(0, 4)
one_in_3 = st.integers(0, 2)
event_ids = st.one_of(uuids, st.text(max_size=8))
short_text = st.text(max_size=8)
good_numbers = st.integers(0, GOOD - 1)
good_sources = st.sampled_from([PAID, CREATED])
TIERS_READING = {src: [src, *(t for s in registry.SERVICES if src in s.sources for t in s.retry_topics(TIERS))]
                 for src in (PAID, CREATED)}
replay_topics = {src: st.sampled_from(targets) for src, targets in TIERS_READING.items()}
#: Where a message of each shape belongs: its topic, or a retry tier of a service reading it.
HOME = {"OrderPaid": PAID, "OrderCreated": CREATED, "OrderCancelled": CANCELLED, "NotificationSent": SENT,
        "InventoryReserved": RESERVED, "StockCommand": REQUESTS, "SkuAnswer": ANSWERS, "Expected": ANSWERS}
natural_topics = {shape: st.sampled_from([home, home, *(t for s in registry.SERVICES if home in s.sources
                                                          for t in s.retry_topics(TIERS))])
                  for shape, home in HOME.items()}
attempt_values = st.sampled_from(HOSTILE_NUMBERS).map(str.encode)
paid_topics = st.sampled_from([PAID, PAID, *registry.NOTIFICATIONS.retry_topics(TIERS)])
other_keys = st.one_of(st.none(), st.binary(max_size=40), st.just(b""))
partitions = st.one_of(st.none(), st.integers(0, PARTITIONS - 1))
timestamps = st.sampled_from(["none", "none", "none", "zero", "old", "future", "y9999"])


def valid_event(draw: st.DrawFn, order_id: str) -> tuple[str, dict]:
    """A message that validates, for a hostile (but well-formed) id: (its shape, its body)."""
    shape = draw(shapes)
    return shape, _valid_body(draw, shape, order_id)


def _valid_body(draw: st.DrawFn, shape: str, order_id: str) -> dict:
    item_list = draw(valid_items)
    base = {"version": "v1", "event_id": draw(uuids)}
    occurred = draw(valid_times)
    if occurred:
        base["occurred_at"] = occurred
    if shape == "OrderPaid":
        return {**base, "order_id": order_id, "user_id": "u-1", "amount": draw(valid_amounts)}
    if shape == "OrderCreated":
        return {**base, "order_id": order_id, "user_id": "u-1", "items": item_list, "amount": draw(valid_amounts)}
    if shape == "OrderCancelled":
        return {**base, "order_id": order_id, "reason": "fuzz"}
    if shape == "NotificationSent":
        return {**base, "order_id": order_id, "user_id": "u-1", "channel": "sms", "causation_id": draw(uuids)}
    if shape == "InventoryReserved":
        return {**base, "order_id": order_id, "items": item_list, "causation_id": draw(uuids)}
    if shape == "StockCommand":
        return {"kind": draw(stock_kinds), "sku": item_list[0]["sku"], "qty": draw(stock_qty),
                "order_id": order_id, "reply_to": draw(reply_to)}
    if shape == "SkuAnswer":
        return {"kind": "answer", "order_id": order_id, "sku": item_list[0]["sku"], "qty": 1,
                "decision": draw(decisions)}
    return {"kind": "expect", "order_id": order_id, "items": item_list, "causation_id": draw(uuids)}


@st.composite
def hostile_record(draw: st.DrawFn) -> Hostile:
    topic = draw(topics)
    kind = draw(kinds)
    headers = draw(headers_strategy)
    order_id = draw(hostile_ids)
    key: bytes | None = encode(order_id)
    value: bytes | None
    if kind == "binary":
        value = draw(binaries)
    elif kind == "null":
        value = draw(nulls)
    elif kind == "json":
        value = json.dumps(draw(json_trees)).encode("utf-8", "surrogatepass")
    elif kind == "big":
        value = b'{"order_id": "' + draw(fillers) * draw(big_sizes) + b'"}'
    elif kind == "shaped":
        shape = draw(shapes)
        body = {f: (order_id if f == "order_id" else draw(FIELDS[f])) for f in SHAPES[shape] if draw(one_in_10) > 0}
        if draw(st.booleans()):
            body["version"] = draw(versions)
        if draw(one_in_5) == 0:
            body["event_id"] = draw(event_ids)
        if draw(one_in_5) == 0:
            body["occurred_at"] = draw(times)
        if draw(one_in_10) == 0:
            body[draw(short_text)] = draw(short_text)
        value = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    elif kind == "valid":
        order_id = draw(valid_ids)
        key = encode(order_id)
        shape, body = valid_event(draw, order_id)
        value = json.dumps(body).encode()
        if draw(one_in_3) > 0:  # mostly where such a message belongs, or a retry tier reading it
            topic = draw(natural_topics[shape])
            if topic != HOME[shape]:  # a retry record: ours, naming where it first arrived
                headers = headers + (("x-source-topic", HOME[shape].encode()),)
        if draw(one_in_10) == 0:  # padded with JSON whitespace: still valid, too large to park
            value = value[:-1] + b" " * draw(pad_sizes) + b"}"
    elif kind == "failing":  # an OrderPaid the gateway fails (503: the retry ladder) or rejects (400)
        order_id = draw(failing_ids)
        key = encode(order_id)
        value = json.dumps(_valid_body(draw, "OrderPaid", order_id)).encode()
        topic = draw(paid_topics)
        if draw(st.booleans()):  # a forged attempt count that, if believed, would pick the retry topic
            headers = headers + (("x-attempt", draw(attempt_values)),)
        if topic != PAID:
            headers = headers + (("x-source-topic", PAID.encode()),)
    else:  # a replay of a good event, with hostile headers, to its topic or a retry tier reading it
        n = draw(good_numbers)
        source = draw(good_sources)
        key, value = good_paid(n) if source == PAID else good_created(n)
        topic = draw(replay_topics[source])
        if topic != source:
            headers = headers + (("x-source-topic", source.encode()),)
    if kind not in ("replay", "valid", "failing") and draw(one_in_3) == 0:
        key = draw(other_keys)
    # A replay goes where its key goes (the default partitioner), like the good event: a
    # copy on another partition is a separate test (test_hostile_input.py).
    partition = None if kind == "replay" else draw(partitions)
    return Hostile(topic, key, value, headers, partition, draw(timestamps), kind)


def generate(n: int) -> list[Hostile]:
    """``n`` records, the same on every run: hypothesis's generate phase, derandomized
    (one example per record: a test case holds a bounded number of choices)."""
    out: list[Hostile] = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile_record())
    def collect(record: Hostile) -> None:
        out.append(record)

    collect()
    return out


def digest(records: list[Hostile]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(repr(r).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def good_id(n: int) -> str:
    return f"good-{n:04d}"


def good_created(n: int) -> tuple[bytes, bytes]:
    return created(good_id(n), items=[{"sku": SKUS[n % len(SKUS)], "qty": 1}],
                   event_id=str(uuid.UUID(int=2 * n + 1)))


def good_paid(n: int) -> tuple[bytes, bytes]:
    return paid(good_id(n), event_id=str(uuid.UUID(int=2 * n + 2)))


# ---------------------------------------------------------------------------------------
# Producing


def timestamp_of(choice: str, now_ms: int) -> int | None:
    return {"none": None, "zero": 0, "old": now_ms - 10 * 86_400_000, "future": now_ms + 3_600_000,
            "y9999": YEAR_9999_MS}[choice]


async def produce_all(bootstrap: str, records: list[Hostile | tuple[str, bytes, bytes]]) -> Counter[str]:
    """Send every record (hostile ones with their headers, partition and timestamp); the
    count of acknowledged records per topic. A record the broker refuses is counted
    under ``refused:<topic>`` (it is in no topic, so nothing has to account for it)."""
    with python_record_builder():  # header keys that are not UTF-8 go out as their bytes
        return await _produce_all(bootstrap, records)


async def _produce_all(bootstrap: str, records: list[Hostile | tuple[str, bytes, bytes]]) -> Counter[str]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    now_ms = int(time.time() * 1000)
    sent: list[tuple[str, asyncio.Future]] = []
    counts: Counter[str] = Counter()
    try:
        for r in records:
            try:
                if isinstance(r, Hostile) and r.key is None and r.value is None:
                    # Kafka takes a record with neither key nor value; aiokafka's send()
                    # refuses one, its batch API does not.
                    batch = producer.create_batch()
                    batch.append(key=None, value=None, timestamp=None, headers=raw_header_names(r.headers))
                    batch.close()
                    future = await producer.send_batch(batch, r.topic, partition=r.partition or 0)
                    sent.append((r.topic, future))
                elif isinstance(r, Hostile):
                    future = await producer.send(r.topic, value=r.value, key=r.key, partition=r.partition,
                                                 headers=raw_header_names(r.headers) or None,
                                                 timestamp_ms=timestamp_of(r.timestamp, now_ms))
                    sent.append((r.topic, future))
                else:
                    topic, key, value = r
                    sent.append((topic, await producer.send(topic, value=value, key=key)))
            except Exception as exc:  # refused by the client before sending
                counts[f"refused:{r.topic if isinstance(r, Hostile) else r[0]}:{type(exc).__name__}"] += 1
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (topic, _), result in zip(sent, results):
            counts[f"refused:{topic}:{type(result).__name__}" if isinstance(result, BaseException) else topic] += 1
    finally:
        await producer.stop()
    return counts


def interleave(rng: random.Random, hostile: list[Hostile], good: list[tuple[str, bytes, bytes]]) -> list:
    out: list = list(hostile)
    for g in good:
        out.insert(rng.randrange(len(out) + 1), g)
    return out


# ---------------------------------------------------------------------------------------
# Checking


def service_topics(spec: registry.ServiceSpec) -> tuple[str, ...]:
    return (*spec.sources, *spec.retry_topics(TIERS))


async def topic_sizes(bootstrap: str, topics: set[str]) -> dict[str, int]:
    return {t: sum((await end_offsets(bootstrap, t)).values()) for t in sorted(topics)}


def outcomes(metrics_text: str) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for labels, value in samples(metrics_text, "event_processed_total"):
        out.setdefault(labels["service"], Counter())[labels["status"]] += int(value)
    return out


def dead_letter_reasons(metrics_text: str) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for labels, value in samples(metrics_text, "dead_letter_total"):
        if value:
            out.setdefault(labels["service"], Counter())[labels["reason"]] += int(value)
    return out


def parkable_ids(records: list[Hostile]) -> set[str]:
    """Every hostile record's key that is a well-formed order id: its events may be
    parked (a superset: most of them are not events at all)."""
    pattern = re.compile(ID_PATTERN)
    out = set()
    for r in records:
        key = (r.key or b"").decode("utf-8", "replace")
        if pattern.match(key):
            out.add(key)
    return out


async def test_fuzz_2000_hostile_records_among_good_events(broker, worker_factory):
    started = time.monotonic()
    async with Gateway(stall=False) as gateway:
        worker = worker_factory(notifier_url=gateway.url, notifier_timeout="2", retry_delays=DELAYS,
                                park_timeout=str(PARK_TIMEOUT), maintenance_interval="0.2",
                                topic_partitions=str(PARTITIONS))

        async def timed_generate() -> tuple[list[Hostile], float]:
            t0 = time.monotonic()
            records = await asyncio.to_thread(generate, RECORDS)
            return records, time.monotonic() - t0

        # The records are generated while the worker starts.
        (hostile, generated_in), _ = await asyncio.gather(timed_generate(),
                                                          asyncio.to_thread(worker.start().wait_ready))
        assert len(hostile) == RECORDS
        rng = random.Random(12)
        # Replays of good events go after the good OrderCreated were consumed (phase 2), so
        # that no good event waits behind one of them; the rest is split in two.
        replays = [h for h in hostile if h.kind == "replay"]
        others = [h for h in hostile if h.kind != "replay"]
        phase1 = interleave(rng, others[: len(others) // 2], [(CREATED, *good_created(n)) for n in range(GOOD)])
        phase2 = interleave(rng, others[len(others) // 2:] + replays, [(PAID, *good_paid(n)) for n in range(GOOD)])
        every = {t for s in registry.SERVICES for t in service_topics(s)}
        with HealthProbe(worker.url) as probe:
            produced = await produce_all(broker.bootstrap, phase1)
            await wait_caught_up(broker.bootstrap, [CREATED], stall=30)
            produced += await produce_all(broker.bootstrap, phase2)

            async def settled() -> bool:
                """Every record of every topic the worker reads is committed, twice in a
                row with the same sizes (retries and derived records count)."""
                before = await topic_sizes(broker.bootstrap, every)
                await wait_caught_up(broker.bootstrap, sorted(every), stall=30)
                return before == await topic_sizes(broker.bootstrap, every)

            await wait_for(settled, timeout=150, step=0.5, what="the worker caught up")

            waiting = parkable_ids(hostile)

            async def nothing_parked() -> bool:
                """No order of a hostile id still has a parked event (each is applied or
                dead-lettered after PARK_TIMEOUT); ids found clear are not asked again."""
                for order_id in sorted(waiting):
                    status, body = await asyncio.to_thread(http_get, f"{worker.url}/orders/{order_id}")
                    if status != 200 or not json.loads(body).get("parked"):
                        waiting.discard(order_id)
                return not waiting

            await wait_for(nothing_parked, timeout=PARK_TIMEOUT + 30, step=0.5, what="parked events resolved")
            await wait_for(settled, timeout=60, step=0.5, what="the worker caught up again")
            text = await asyncio.to_thread(worker.metrics)
            sizes = await topic_sizes(broker.bootstrap, every)
        elapsed = time.monotonic() - started

        # -- the counts, for the release notes ------------------------------------------
        by_service = outcomes(text)
        reasons = dead_letter_reasons(text)
        print(f"\nfuzz: {RECORDS} hostile records (digest {digest(hostile)}, generated in {generated_in:.1f}s) "
              f"+ {2 * GOOD} good events; run {elapsed:.0f}s")
        print("fuzz: hostile records by kind:", dict(sorted(Counter(h.kind for h in hostile).items())))
        print("fuzz: produced per topic:", dict(sorted(produced.items())))
        print("fuzz: records per topic read by the worker (its own retries and derived records included):",
              {t: n for t, n in sizes.items() if n})
        for name in registry.SERVICE_NAMES:
            print(f"fuzz: {name} outcomes:", dict(sorted(by_service.get(name, Counter()).items())),
                  "dead letters by reason:", dict(sorted(reasons.get(name, Counter()).items())))
        print(f"fuzz: /health polled {len(probe.answers)} times, non-200: {len(probe.failures())}")

        # -- every record accounted for ------------------------------------------------
        assert not [k for k in produced if k.startswith("refused:")], produced
        accounts = {}
        # A record on a partition its key does not map to is sent on to the key's
        # partition and processed there: the topic holds it twice, it counts once.
        rerouted = {t: metric_value(text, "engine_rerouted_records_total", topic=t) for t in sizes}
        for spec in registry.SERVICES:
            got = by_service.get(spec.name, Counter())
            consumed = sum(sizes[t] - rerouted[t] for t in service_topics(spec))
            resolved_parked = got["parked"]  # each counted once more when applied or dead-lettered
            accounts[spec.name] = (consumed, sum(got.values()) - resolved_parked)
        print("fuzz: records consumed vs outcomes (parked counted once) per service:", accounts)
        assert all(consumed == counted for consumed, counted in accounts.values()), accounts

        # -- every good event processed once ---------------------------------------------
        goods = {good_id(n).encode() for n in range(GOOD)}
        sent = Counter(r.key for r in await read_topic(broker.bootstrap, SENT) if r.key in goods)
        twice = {k.decode(): sent[k] for k in sorted(goods) if sent[k] != 1}
        replayed = {k: sorted({(h.topic, h.timestamp) for h in hostile if h.kind == "replay" and h.key == k.encode()
                               and h.value == good_paid(int(k[5:]))[1]}) for k in twice}
        assert not twice, ("NotificationSent per good order id", twice, "its replays (topic, timestamp):", replayed)
        assert {g: n for g in map(good_id, range(GOOD)) if (n := gateway.accepted[g]) != 1} == {}
        decided = [*await read_topic(broker.bootstrap, RESERVED), *await read_topic(broker.bootstrap, REJECTED)]
        results = Counter(r.key for r in decided if r.key in goods)
        assert results == Counter({g: 1 for g in goods}), [k for k in goods if results[k] != 1][:5]
        for n in range(GOOD):
            status, body = await asyncio.to_thread(http_get, f"{worker.url}/orders/{good_id(n)}")
            assert status == 200, (good_id(n), body)
            view = json.loads(body)
            assert view["status"] == "NOTIFIED" and view["reservation"] in ("RESERVED", "REJECTED"), view
            assert [h["type"] for h in view["history"]].count("OrderPaid") == 1, view

        # -- nothing outside the registry; healthy throughout ----------------------------
        topics = await broker_topics(broker.bootstrap)
        assert not foreign_topics(topics, TIERS), sorted(foreign_topics(topics, TIERS))
        assert probe.answers and not probe.failures(), probe.failures()[:3]
        assert worker.proc.poll() is None, worker.tail()
