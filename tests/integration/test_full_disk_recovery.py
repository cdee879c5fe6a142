"""A state store that cannot be written never leaves the worker alive and stuck
(issue 23, item 11: with ``DATA_DIR`` full, ``/health`` said why — but after space came
back the worker stayed 503 and committed nothing until restarted by hand).

``DATA_DIR`` is a small tmpfs (root only: ``mount -t tmpfs``); a filler file takes its
last free byte while orders flow, ``/health`` goes 503 naming the failing state write,
then the filler is removed. The worker must either recover by itself — ``/health``
200 and every order's records committed — or exit non-zero for its supervisor."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from streams.events import OrderCreated, OrderPaid
from harness.events import created, paid
from harness.kafka import produce, wait_consumed
from harness.worker import WorkerProcess, http_get

pytestmark = pytest.mark.kafka


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("this test mounts a tmpfs as DATA_DIR (mount -t tmpfs): it needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> Path:
    """Writes ``path`` until the filesystem has no free byte left."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 20)
        while True:
            try:
                f.write(chunk)
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return filler


def health(worker) -> tuple[int, dict]:
    try:
        status, body = http_get(f"{worker.url}/health", timeout=2)
        return status, json.loads(body)
    except (OSError, ValueError) as exc:
        return 0, {"error": repr(exc)}


@pytest.fixture
def worker(broker, small_tmpfs, tmp_path: Path):
    w = WorkerProcess(broker.url, small_tmpfs / "data", tmp_path / "worker.log", send_budget="2")
    yield w
    w.kill()


async def test_a_full_data_dir_recovers_by_itself_once_space_is_back(broker, worker, small_tmpfs):
    await asyncio.to_thread(worker.start().wait_ready)
    ids = [f"o-disk-{i}" for i in range(40)]
    await produce(broker.bootstrap, OrderCreated.topic(), [created(i) for i in ids[:20]])
    await wait_consumed(broker.bootstrap, [OrderCreated.topic()])

    filler = fill(small_tmpfs)
    full_at = time.monotonic()
    await produce(broker.bootstrap, OrderCreated.topic(), [created(i) for i in ids[20:]])
    await produce(broker.bootstrap, OrderPaid.topic(), [paid(i) for i in ids])
    while True:
        status, body = health(worker)
        if status == 503 and body.get("problems"):
            break
        assert worker.proc.poll() is None or worker.proc.returncode != 0, "worker exited 0 on a full disk"
        if worker.proc.poll() is not None:
            break
        assert time.monotonic() - full_at < 60, f"/health never said why: {status} {body}\n{worker.tail()}"
        await asyncio.sleep(0.1)
    to_503 = time.monotonic() - full_at
    print(f"disk full → /health {status} in {to_503:.1f}s: {body.get('problems')}")

    filler.unlink()
    freed_at = time.monotonic()
    while True:
        if worker.proc.poll() is not None:
            assert worker.proc.returncode != 0, "worker exited 0"
            print(f"space back → worker exited {worker.proc.returncode} after "
                  f"{time.monotonic() - freed_at:.1f}s (its supervisor restarts it)")
            return
        status, body = health(worker)
        if status == 200:
            break
        assert time.monotonic() - freed_at < 90, f"stuck after space came back: {status} {body}\n{worker.tail()}"
        await asyncio.sleep(0.2)
    to_200 = time.monotonic() - freed_at
    await wait_consumed(broker.bootstrap, [OrderCreated.topic(), OrderPaid.topic()], timeout=60)

    def unfinished() -> dict[str, object]:
        out = {}
        for i in ids:
            status, body = http_get(f"{worker.url}/orders/{i}")
            state = json.loads(body) if status == 200 else {"http": status}
            if state.get("status") != "NOTIFIED":
                out[i] = state.get("status", state)
        return out

    while left := await asyncio.to_thread(unfinished):  # every order's state, the 20 before the disk filled too
        assert time.monotonic() - freed_at < 90, f"orders not NOTIFIED: {left}"
        await asyncio.sleep(0.2)
    print(f"full-disk timeline: disk full → 503 in {to_503:.1f}s; space back → 200 in {to_200:.1f}s, "
          f"every record committed {time.monotonic() - freed_at:.1f}s after; worker starts: {worker.starts}")
    assert worker.starts == 1
