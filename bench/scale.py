"""Scale over cores (issue 21 item 5): the ``OrderPaid`` flood, default ``SERVICES``, on
one worker process and on two in one consumer group, on the same kind of fresh broker.

Both runs are timed the same way, so their ratio is the throughput factor of a second
process: every worker is started and answers ``/health`` 200 first (the group has
settled: no rebalance inside the measurement), then the flood is produced and the clock
runs from its first record to the first ``/metrics`` poll — summed over the workers —
that says every service processed everything. Not a goal: on this machine the broker,
the producer and the workers share two cores, and the report says where the ceiling is
(each worker's CPU seconds are recorded beside the wall time).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import create_topics, fresh_broker, order_paid_inputs, process_cpu_seconds, produce_all, wait_metrics
from bench.pairs import DEFAULT_SERVICES, PAID, _paid_done
from harness.worker import WorkerProcess, http_get


class _Summed:
    """The workers' ``/metrics`` texts, one after another: the counters ``done`` sums
    count every worker's share."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers

    def metrics(self) -> str:
        return "\n".join(w.metrics() for w in self.workers)

    @property
    def _first_down(self) -> WorkerProcess:
        """The first worker that exited (else the first): wait_metrics reports it."""
        return next((w for w in self.workers if w.proc is not None and w.proc.poll() is not None), self.workers[0])

    @property
    def proc(self) -> Any:
        return self._first_down.proc

    @property
    def log_path(self) -> Path:
        return self._first_down.log_path

    def tail(self) -> str:
        return self._first_down.tail()


async def flood(n: int, distinct: int, workers: int, workdir: Path) -> dict[str, Any]:
    """``n`` OrderPaid over ``distinct`` ids through ``workers`` worker processes."""
    wd = workdir / f"scale-{workers}-{time.strftime('%H%M%S')}-{time.perf_counter_ns() % 10**6}"
    wd.mkdir(parents=True)
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID])
        procs = [WorkerProcess(broker.url, wd / f"data-{i}", wd / f"worker-{i}.log", services=DEFAULT_SERVICES)
                 for i in range(workers)]
        try:
            for w in procs:
                w.start()
            for w in procs:
                await asyncio.to_thread(w.wait_ready, 180.0)
            await _settled(procs)
            cpu0 = [process_cpu_seconds(w.proc.pid) for w in procs]  # type: ignore[union-attr]
            t0 = time.time()
            produced = await produce_all(broker.bootstrap, PAID, order_paid_inputs(n, distinct))
            t1, _ = await wait_metrics(_Summed(procs), _paid_done(DEFAULT_SERVICES, n, distinct),
                                       timeout=max(600.0, n / 50))
            cpu = [process_cpu_seconds(w.proc.pid) - c for w, c in zip(procs, cpu0)]  # type: ignore[union-attr]
            seconds = max(1e-6, t1 - t0)
            return {"workers": workers, "inputs": produced, "seconds": seconds, "per_s": n / seconds,
                    "cpu_seconds": cpu, "cpu_share_of_wall": [c / seconds for c in cpu]}
        finally:
            for w in procs:
                await asyncio.to_thread(w.kill)
            shutil.rmtree(wd, ignore_errors=True)


async def _settled(procs: list[WorkerProcess], timeout: float = 120.0) -> None:
    """Until the group has settled: every worker answers /health 200, none is
    rebalancing, and the partitions of ``OrderPaid`` are assigned once each across them
    (every worker holding some)."""
    deadline = time.monotonic() + timeout
    while True:
        answers = [http_get(f"{w.url}/health") for w in procs]
        bodies = [json.loads(body) if status == 200 else None for status, body in answers]
        if all(b is not None and not b.get("rebalancing") for b in bodies):
            held = [[a for a in b["assigned"] if a.startswith(PAID + ":")] for b in bodies]  # type: ignore[index]
            flat = [a for h in held for a in h]
            if all(held) and len(flat) == len(set(flat)) == 4:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the group of {len(procs)} workers did not settle in {timeout}s: {bodies}")
        await asyncio.sleep(0.2)


async def run(n: int, distinct: int, workdir: Path) -> dict[str, Any]:
    """One worker, then two; the factor is two's events/s ÷ one's."""
    one = await flood(n, distinct, 1, workdir)
    two = await flood(n, distinct, 2, workdir)
    return {"one": one, "two": two, "factor": two["per_s"] / one["per_s"]}
