"""Paging through dead letters without a broker: a page reads a bounded number of
records whatever the topic holds (100,000 letters here), the cursor resumes where the
page stopped, and the filters are parsed strictly. Plus the overview's rates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from streams.ops import dlq
from streams.http.console import dlq_page
from streams.http.console.dlq_page import BadQuery, Filter, find, parse_cursor, parse_filter
from streams.http.console.overview import Sampler
from streams.ops.dlq import DeadLetter

TOTAL = 100_000


class FakeTopic:
    """100,000 dead letters of notifications, streamed like iter_dead_letters (after a cursor)."""

    def __init__(self, reason_every: int = 0) -> None:
        self.read = 0
        self.reason_every = reason_every

    def letter(self, offset: int) -> DeadLetter:
        reason = b"max_attempts" if not self.reason_every or offset % self.reason_every == 0 else b"decode_error"
        headers = {"x-dlq-reason": reason, "x-failed-at": str(1_700_000_000_000 + offset).encode()}
        return DeadLetter("notifications", 0, offset, f"o-{offset % 1000}".encode(), b"{}", headers, 0,
                          tuple(headers.items()))

    async def iterate(self, bootstrap: str, service: Any = None, *, start_after: str | None = None,
                      **kwargs: Any) -> AsyncIterator[DeadLetter]:
        assert not kwargs.get("reason") and not kwargs.get("since_ms")  # the page filters, to know where it stopped
        start = dlq.parse_id(start_after)[2] + 1 if start_after else 0
        for offset in range(start, TOTAL):
            self.read += 1
            yield self.letter(offset)


@pytest.fixture
def topic(monkeypatch: pytest.MonkeyPatch) -> FakeTopic:
    t = FakeTopic()
    monkeypatch.setattr(dlq, "iter_dead_letters", t.iterate)
    return t


async def test_a_page_reads_one_letter_past_the_page_and_no_more(topic):
    found = await find("b", Filter(), limit=50)
    assert [d.offset for d in found.letters] == list(range(50))
    assert topic.read == 51 and found.next_cursor == "notifications.dlq:0:49" and not found.budget_hit
    second = await find("b", Filter(), after=found.next_cursor, limit=50)
    assert [d.offset for d in second.letters] == list(range(50, 100))


async def test_a_filter_that_matches_nothing_stops_at_the_scan_budget(topic):
    found = await find("b", Filter(reason="illegal_transition"), limit=50)
    assert found.letters == [] and found.budget_hit
    assert topic.read == dlq_page.SCAN_BUDGET < TOTAL
    assert found.next_cursor == f"notifications.dlq:0:{dlq_page.SCAN_BUDGET - 1}"


async def test_a_rare_match_is_found_page_by_page(monkeypatch):
    t = FakeTopic(reason_every=7000)
    monkeypatch.setattr(dlq, "iter_dead_letters", t.iterate)
    f = Filter(reason="max_attempts")
    first = await find("b", f, limit=2)
    assert [d.offset for d in first.letters] == [0] and first.budget_hit
    second = await find("b", f, after=first.next_cursor, limit=2)
    assert [d.offset for d in second.letters] == [7000] and t.read == 2 * dlq_page.SCAN_BUDGET


async def test_key_and_since_filters(topic):
    found = await find("b", parse_filter({"key": "o-7", "since": "2023-11-14T22:13:20.010Z"}), limit=3)
    assert [d.offset for d in found.letters] == [1007, 2007, 3007]


@pytest.mark.parametrize("query", [{"service": "payments"}, {"reason": "<b>"}, {"reason": "x" * 41},
                                   {"key": "a b"}, {"key": "<script>"}, {"since": "last tuesday"}])
def test_bad_filters_are_refused(query):
    with pytest.raises(BadQuery):
        parse_filter(query)


def test_cursors_are_dead_letter_ids_of_the_chosen_services():
    assert parse_cursor("notifications.dlq:1:2", Filter()) == "notifications.dlq:1:2"
    with pytest.raises(BadQuery):
        parse_cursor("notifications.dlq:1:x", Filter())
    with pytest.raises(BadQuery):
        parse_cursor("inventory.dlq:1:2", Filter(service="notifications"))


def test_rates_come_from_samples_over_time():
    now = [100.0]
    s = Sampler(window=60, clock=lambda: now[0])
    rates, span = s.add({("a",): 10})
    assert rates == {("a",): None} and span == 0
    now[0] = 102.0
    rates, span = s.add({("a",): 30})
    assert rates[("a",)] == pytest.approx(10.0) and span == 2
    now[0] = 200.0  # older samples drop out of the window
    rates, _ = s.add({("a",): 130})
    assert rates[("a",)] == pytest.approx(100 / 98)
    now[0] = 210.0
    rates, span = s.add({("a",): 230})
    assert span == 10 and rates[("a",)] == pytest.approx(10.0)


async def test_heavy_console_requests_take_turns_and_the_rest_are_told_busy():
    """Eight parallel DLQ page loads each held a page of letters at once (issue 23: 3.7 GB)."""
    import asyncio

    from streams.http.console.views import Busy, HeavyRequests

    heavy = HeavyRequests(n=2, wait=0.2)
    running, most, release = 0, 0, asyncio.Event()
    outcomes: list[str] = []

    async def load() -> None:
        nonlocal running, most
        try:
            async with heavy.turn():
                running += 1
                most = max(most, running)
                await release.wait()
                running -= 1
                outcomes.append("served")
        except Busy:
            outcomes.append("busy")

    tasks = [asyncio.ensure_future(load()) for _ in range(8)]
    async with asyncio.timeout(10):
        while outcomes.count("busy") < 6:  # the six without a turn give up after their wait
            await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*tasks)
    assert most == 2 and sorted(outcomes) == ["busy"] * 6 + ["served"] * 2
