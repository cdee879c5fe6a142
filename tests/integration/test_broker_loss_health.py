"""Broker loss is visible: ``/health`` answers 503 naming the broker once the worker
has had no answer from it for ``BROKER_LOSS_TIMEOUT``, and 200 again by itself when
the broker answers — no restart. An idle worker (no records at all) stays 200 while
the broker answers, for longer than the timeout.

The broker is frozen (SIGSTOP): its connections stay open and its port accepts, but
nothing is answered — the case no connection error reveals (issue 23, item 10: the
broker frozen for 180 s, ``/health`` 200 throughout)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from harness.worker import http_get

pytestmark = pytest.mark.kafka

TIMEOUT = 3.0


def health(worker) -> tuple[int, dict]:
    try:
        status, body = http_get(f"{worker.url}/health", timeout=2)
    except OSError as exc:
        return 0, {"error": repr(exc)}
    return status, json.loads(body)


def wait_health(worker, want, deadline_s: float) -> tuple[float, dict]:
    """Poll /health until ``want(status, body)``; the seconds it took and the body."""
    started = time.monotonic()
    last: tuple[int, dict] = (0, {})
    while time.monotonic() - started < deadline_s:
        assert worker.proc.poll() is None, f"worker exited:\n{worker.tail()}"
        last = health(worker)
        if want(*last):
            return time.monotonic() - started, last[1]
        time.sleep(0.1)
    raise TimeoutError(f"/health never matched in {deadline_s}s; last: {last}\n{worker.tail()}")


def test_health_names_a_frozen_broker_and_turns_200_again_when_it_answers(broker, worker_factory):
    worker = worker_factory(broker_loss_timeout=str(TIMEOUT)).start().wait_ready()

    # idle (nothing produced), the broker answering: 200 on every poll for twice the timeout
    ready = time.monotonic()
    while time.monotonic() - ready < 2 * TIMEOUT:
        status, body = health(worker)
        assert status == 200, (status, body)
        time.sleep(0.2)

    pids = broker.pids  # every node's process, on Tansu and on Kafka
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        to_503, body = wait_health(worker, lambda s, b: s == 503, deadline_s=10 * TIMEOUT)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert any("Kafka broker" in p and "BROKER_LOSS_TIMEOUT" in p for p in body["problems"]), body
    assert body["status"] == "unhealthy", body

    to_200, body = wait_health(worker, lambda s, b: s == 200, deadline_s=90)
    assert body["problems"] == [] and worker.starts == 1 and worker.proc.poll() is None
    print(f"broker loss timeline (BROKER_LOSS_TIMEOUT={TIMEOUT:g}s): frozen → 503 in {to_503:.1f}s; "
          f"thawed → 200 in {to_200:.1f}s; worker not restarted")
