"""Redrive jobs without a broker: a dry run of a selection reports what would be sent,
what the ledger already has, what is refused and what is gone — and its page offers
the confirmation only then, with the same selection and the CSRF token."""

from __future__ import annotations

import asyncio

import pytest

from streams.ops import dlq
from streams.http.console import redrive
from streams.http.console.dlq_page import parse_filter
from streams.http.console.redrive import Jobs, Selection, render_job
from streams.ops.dlq import DeadLetter

PAID = b"events.order.paid.v1"


def letter(offset: int, source: bytes = PAID) -> DeadLetter:
    h = {"x-dlq-reason": b"max_attempts", "x-source-topic": source}
    return DeadLetter("notifications", 0, offset, f"o-{offset}".encode(), b"{}", h, 0, tuple(h.items()))


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> dict[str, DeadLetter]:
    letters = {d.id: d for d in (letter(1), letter(2), letter(3, b"inventory.requests"))}

    async def get_dead_letters(bootstrap, ids, client_kwargs=None, preview_bytes=None):
        return {i: letters.get(i) for i in ids}

    async def redriven_ids(bootstrap, service, client_kwargs=None):
        return {"notifications.dlq:0:2"}

    monkeypatch.setattr(dlq, "get_dead_letters", get_dead_letters)
    monkeypatch.setattr(dlq, "redriven_ids", redriven_ids)
    return letters


async def run(selection: Selection, dry_run: bool = True) -> redrive.Job:
    jobs = Jobs("b", {})
    job = jobs.start(selection, dry_run)
    await asyncio.gather(*jobs.tasks)
    return job


async def test_a_dry_run_of_a_selection_sorts_every_letter(kafka):
    ids = ("notifications.dlq:0:1", "notifications.dlq:0:2", "notifications.dlq:0:3", "notifications.dlq:0:9")
    job = await run(Selection("selection", ids))
    assert job.state == "done" and job.total == 4 and job.scanned == 4
    assert job.counts == {"redriven": 0, "would_redrive": 1, "already_redriven": 1, "refused": 1, "missing": 1}
    actions = {o["id"]: o["action"] for o in job.outcomes}
    assert actions == {ids[0]: "would_redrive", ids[1]: "already_redriven", ids[2]: "refused", ids[3]: "missing"}

    page = render_job(job, csrf="c0ffee")
    assert "data-final" in page and 'class="danger confirm-redrive"' in page
    confirm = page[page.index('<form method="post"'):page.index("</form>")]
    assert 'name="dry_run" value="0"' in confirm and 'name="csrf" value="c0ffee"' in confirm
    assert all(f'name="id" value="{i}"' in confirm for i in ids)
    assert "inventory.requests" in page  # why it was refused


@pytest.mark.kafka
async def test_no_confirmation_without_the_right_to_write_or_after_a_real_run(tansu):
    """On the embedded broker, nothing faked: a real run sends the letter back to its
    source topic and appends it to the ledger — both read back from the broker."""
    from harness.events import paid
    from harness.kafka import produce, read_topic

    key, value = paid("o-redrive")
    headers = [("x-source-topic", PAID), ("x-dlq-reason", b"max_attempts"), ("x-attempt", b"3"),
               ("x-source-partition", b"0"), ("x-source-offset", b"7")]
    await produce(tansu.bootstrap, "notifications.dlq", [(key, value)], headers=headers, partition=0)
    letter_id = "notifications.dlq:0:0"
    jobs = Jobs(tansu.bootstrap, {})

    async def run_here(dry_run: bool) -> redrive.Job:
        job = jobs.start(Selection("selection", (letter_id,)), dry_run)
        await asyncio.gather(*jobs.tasks)
        return job

    job = await run_here(dry_run=True)
    assert job.state == "done" and job.counts["would_redrive"] == 1, (job.state, job.error, job.counts)
    assert "confirm-redrive" not in render_job(job, csrf=None)
    real = await run_here(dry_run=False)
    assert real.state == "done" and real.counts["redriven"] == 1, (real.state, real.error, real.counts)
    assert await dlq.redriven_ids(tansu.bootstrap, "notifications") == {letter_id}
    [sent] = [r for r in await read_topic(tansu.bootstrap, PAID.decode()) if r.key == key]
    assert sent.value == value and sent.headers["x-redriven-from"] == letter_id.encode()
    page = render_job(real, csrf="c0ffee")
    assert "confirm-redrive" not in page and "Finished" in page


async def test_a_failing_broker_fails_the_job_with_one_line(monkeypatch):
    async def unreachable(*args, **kwargs):
        raise dlq.DlqError("Kafka broker b unreachable (KafkaConnectionError)")

    monkeypatch.setattr(dlq, "get_dead_letters", unreachable)
    job = await run(Selection("selection", ("notifications.dlq:0:1",)))
    assert job.state == "failed" and "unreachable" in job.error
    assert "unreachable" in render_job(job, csrf="c0ffee") and "confirm-redrive" not in render_job(job, csrf="c0ffee")


def test_a_filters_confirmation_carries_an_absolute_since():
    s = Selection("filter", filter=parse_filter({"service": "notifications", "reason": "max_attempts", "since": "2h"}))
    fields = s.form_fields()
    assert fields["mode"] == "filter" and fields["reason"] == "max_attempts"
    assert parse_filter({"since": fields["since"]}).since_ms == s.filter.since_ms
