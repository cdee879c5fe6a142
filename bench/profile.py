"""Where a worker's time goes (issue 21 item 3): py-spy samples of the worker process over
one measured run, folded into the functions that spent it and the areas they belong to.

``py-spy record --nonblocking`` samples the live process from outside (it never pauses
it) at ``RATE`` Hz; idle samples (the loop waiting for the broker) are left out, so the
shares are of the worker's *busy* time. Only Python frames are seen: the time spent in
a C extension (pydantic-core, rocksdict, the JSON and CRC codecs) is charged to the
Python function that called it, which names the library anyway.

The profiled run is a run of its own, after the pairs: the sampler takes CPU on a
2-core machine, so no ratio in the report comes from a profiled run.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 100
#: (a path fragment of the frame's file, the area it belongs to), first match wins
AREAS: tuple[tuple[str, str], ...] = (
    ("pydantic", "validation (pydantic)"),
    ("/json/", "JSON"),
    ("rocksdict", "state store (RocksDB)"),
    ("aiokafka", "Kafka client (aiokafka)"),
    ("faust/", "Faust"),
    ("mode/", "Faust"),
    ("streams/engine/", "engine"),
    ("streams/faust/", "worker (Faust adapters)"),
    ("agents/", "services"),
    ("tables/", "services"),
    ("streams/events/", "events"),
    ("prometheus_client", "metrics"),
    ("asyncio", "event loop"),
    ("aiohttp", "web server"),
    ("streams/", "worker"),
)


def py_spy() -> str | None:
    """The py-spy executable (the bench extra installs it into the venv), or None."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """``py-spy record`` on ``pid`` from :meth:`start` until :meth:`stop`."""

    def __init__(self, pid: int, out: Path, rate: int = RATE) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Sampler":
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
        self.proc = subprocess.Popen([exe, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                                      "--nonblocking", "--format", "raw", "--output", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sampling (py-spy writes its file on SIGINT) and summarise the samples."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
        return summarize(self.out.read_text(errors="replace"))


def summarize(raw: str, top: int = 15) -> dict[str, Any]:
    """Collapsed stacks (``frame;frame;… count`` per line, innermost last) → the share
    of samples per innermost function (self time) and per area."""
    by_function: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = stack.split(";")[-1]
        by_function[function_name(leaf)] += n
        by_area[area_of(leaf)] += n
        total += n
    share = (lambda n: n / total) if total else (lambda n: 0.0)
    return {"samples": total, "rate_hz": RATE,
            "functions": [(f, share(n)) for f, n in by_function.most_common(top)],
            "areas": [(a, share(n)) for a, n in by_area.most_common()]}


def function_name(frame: str) -> str:
    """``"validate (/…/site-packages/pydantic/main.py:712)"`` → ``"validate (pydantic/main.py)"``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib/"):
                path = path.split("/", 1)[-1]
            break
    else:
        root = str(Path(__file__).resolve().parents[1]) + "/"
        path = path.removeprefix(root)
    return f"{name} ({path})" if path else name


def area_of(frame: str) -> str:
    path = frame.partition(" (")[2]
    for fragment, area in AREAS:
        if fragment in path:
            return area
    return "other"
