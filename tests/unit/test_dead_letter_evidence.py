"""A dead letter is the evidence of what arrived: every header, in order, repeats kept,
header keys that are not UTF-8 kept as bytes — and it is never lost for its size
(issue 23, items 1, 5 and 9). Pipeline with fakes of its ports."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from pathlib import Path

from streams.engine import headers as H
from streams.engine.errors import GatewayRejected, UnknownDestination
from streams.engine.records import Record
from streams.engine.routing import LETTER_HEAD_BYTES, OURS, shrink_letter
from streams.engine.testing import NOW_MS, wait_until
from tests.unit.fakes import PAID_TOPIC, paid_record
from tests.unit.test_pipeline import DLQ, Harness

RAW = b"\xff\xfe"


def with_items(record: Record, items: tuple[tuple[str, bytes], ...]) -> Record:
    return record._replace(headers=dict(items), header_items=items)


async def test_a_header_key_that_is_not_utf8_dead_letters_the_record_with_the_key_kept_as_bytes() -> None:
    h = Harness()
    raw_name = RAW.decode("utf-8", "surrogateescape")  # as the record reader hands it over
    items = (("trace", b"a"), (raw_name, b"1"), ("trace", b"b"))
    counts = await h.process([with_items(paid_record("o-raw", offset=1), items), paid_record("o-ok", offset=2)])
    assert counts == Counter(dead_letter=1, success=1)
    [letter] = h.publisher.to(DLQ)
    assert letter.key == b"o-raw"
    names = [k for k, _ in letter.headers]
    assert names[:3] == ["trace", H.RAW_KEY_PREFIX + RAW.hex(), "trace"]
    assert dict(letter.headers)[H.DLQ_REASON] == b"decode_error"
    assert "not UTF-8" in dict(letter.headers)[H.ERROR_MESSAGE].decode()
    # every header of every record the pipeline sends can be written by aiokafka
    for m in h.publisher.sent:
        for k, _ in m.headers:
            k.encode("utf-8")


async def test_repeated_header_names_reach_the_dead_letter_in_order() -> None:
    h = Harness(errors={"o-1": GatewayRejected("HTTP 400")})
    items = (("trace", b"1"), ("span", b"s"), ("trace", b"2"), ("trace", b"3"))
    assert await h.process([with_items(paid_record("o-1"), items)]) == Counter(dead_letter=1)
    [letter] = h.publisher.to(DLQ)
    theirs = [(k, v) for k, v in letter.headers if not k.startswith("x-")]
    assert theirs == list(items)


async def test_a_dead_letter_with_a_huge_key_and_a_small_value_is_shrunk_not_lost() -> None:
    """It was "could not be sent and is lost" (acknowledged, counted as dead-lettered):
    only a value longer than the kept head was shrunk."""
    h = Harness(errors={}, max_message_bytes=64 * 1024)
    key = b"k" * 200_000
    record = paid_record("o-1", key=key)  # key ≠ order id → validation_error
    assert await h.process([record]) == Counter(dead_letter=1)
    [letter] = h.publisher.to(DLQ)
    got = dict(letter.headers)
    assert got[H.DLQ_REASON] == b"too_large"
    assert letter.key == key[:LETTER_HEAD_BYTES]
    assert got["x-original-key-size"] == b"200000"
    assert got["x-original-key-sha256"] == hashlib.sha256(key).hexdigest().encode()


async def test_a_dead_letter_with_huge_headers_keeps_what_fits_and_counts_the_rest() -> None:
    h = Harness(errors={"o-1": GatewayRejected("HTTP 400")}, max_message_bytes=64 * 1024)
    items = (("small", b"s"), ("huge", b"h" * 100_000), ("trace", b"t"))
    assert await h.process([with_items(paid_record("o-1"), items)]) == Counter(dead_letter=1)
    [letter] = h.publisher.to(DLQ)
    got = dict(letter.headers)
    assert got[H.DLQ_REASON] == b"too_large"
    assert "huge" not in got and got["small"] == b"s" and got["trace"] == b"t"
    assert got["x-dropped-headers"] == b"1"


def test_a_shrunk_letter_is_bounded_whatever_it_carried() -> None:
    from streams.engine.records import Outgoing

    letter = Outgoing(DLQ, b"k" * 10_000_000, b"v" * 10_000_000,
                      tuple((f"h{i}", b"x" * 100_000) for i in range(100)) + ((H.ATTEMPT, b"1"),), 0)
    assert shrink_letter(letter).size() < 64 * 1024


async def test_a_dead_letter_that_cannot_be_sent_is_never_acknowledged() -> None:
    """"Dead-lettered" means "in the DLQ": the batch does not return (its offsets are not
    acknowledged) while its letter cannot be sent, and health says so."""
    from streams.engine.health import Health

    h = Harness(errors={"o-1": GatewayRejected("HTTP 400")})
    h.pipeline.health = Health()
    h.publisher.reject[DLQ] = UnknownDestination("the DLQ topic is gone")
    task = asyncio.ensure_future(h.pipeline.process([paid_record("o-1")]))
    await wait_until(lambda: len(h.publisher.to(DLQ)) >= 3)
    assert not task.done()
    assert h.pipeline.health.send_failing_since is not None
    assert h.processed("dead_letter") == 0
    del h.publisher.reject[DLQ]  # the topic is back: the letter goes, the batch returns
    assert await asyncio.wait_for(task, 5) == Counter(dead_letter=1)
    assert h.processed("dead_letter") == 1


def test_every_header_name_a_dead_letter_can_carry_is_described_in_the_readme() -> None:
    """The evidence must be readable: each header name the engine writes on a letter
    (its own, a shrunk letter's, a raw header key's) has a row in the README's "Retry
    and DLQ headers" table. The key's size/digest, the dropped-header count and
    ``x-raw-key:<hex>`` were written on letters but described nowhere."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Retry and DLQ headers", 1)[1].split("\n## ", 1)[0]
    described = set(re.findall(r"`(x-[^`]+)`", section))
    written = set(OURS) | {H.RAW_KEY_PREFIX + "<hex>"}
    assert written <= described, sorted(written - described)
