"""Start-up: ``faust --quiet -A streams worker`` (every service) from process start to its
first ``/health`` 200 (issue 21 item 4).

Each round on a fresh broker of the kind the bench runs on (``bench.common.BROKER``):

- ``empty``: the first start on an empty broker — every topic created, a new group;
- ``restart``: the same worker stopped (SIGTERM) and started again on its data dir —
  the topics and the group exist (what a restart or a takeover pays).

Measured from outside, as the tests see it: from just before the ``Popen`` to the first
200 of ``/health`` (``harness/worker.py``, polled every 50 ms), so interpreter
start, imports, app creation, the group join, table recovery and the engine's seek are
all in. The worker's own log names the phases (``-l info``) for a profile.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import bench.common as common
from harness.worker import WorkerProcess

#: every consuming service, as the goal row says
SERVICES = "notifications,order-state,inventory"


def _start(worker: WorkerProcess) -> float:
    t0 = time.time()
    worker.start()
    worker.wait_ready(120)
    assert worker.ready_at is not None
    return worker.ready_at - t0


def _round(i: int, work: Path) -> dict[str, Any]:
    wd = work / f"startup-{i}"
    wd.mkdir(parents=True, exist_ok=True)
    with common.fresh_broker() as broker:
        worker = WorkerProcess(broker.url, wd / "data", wd / "worker.log", services=SERVICES)
        try:
            empty = _start(worker)
            worker.stop()
            restart = _start(worker)
        finally:
            worker.stop()
    return {"empty_s": empty, "restart_s": restart, "log": str(wd / "worker.log")}


async def run(rounds: int, work: Path) -> dict[str, Any]:
    """``rounds`` rounds; medians and every value."""
    got = [await asyncio.to_thread(_round, i, work) for i in range(rounds)]
    empty = [g["empty_s"] for g in got]
    restart = [g["restart_s"] for g in got]
    return {"rounds": got, "services": SERVICES, "empty_s": empty, "restart_s": restart,
            "empty_median_s": statistics.median(empty), "restart_median_s": statistics.median(restart)}


if __name__ == "__main__":  # python -m bench.startup [rounds] [tansu|kafka]
    import json
    import sys
    import tempfile

    if len(sys.argv) > 2:
        common.BROKER = sys.argv[2]
    out = asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 5,
                          Path(tempfile.mkdtemp(prefix="bench-startup-"))))
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1))
