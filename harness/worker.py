"""Worker processes for tests and benchmarks: the real ``faust … worker``, and a probe of
its ``/health`` for the whole of a run (:class:`HealthProbe`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from streams.broker import free_port

ROOT = Path(__file__).resolve().parents[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class WorkerProcess:
    """``faust --quiet -A streams worker`` (the README's command) in a subprocess with its
    own port and data dir."""

    def __init__(self, broker_url: str, data_dir: Path, log_path: Path, *, app: str = "streams", **env: str) -> None:
        self.broker_url = broker_url
        #: the ``-A`` app module (a test's own app module, e.g. one that causes a position hazard)
        self.app = app
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.env = {k.upper(): str(v) for k, v in env.items()}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: epoch seconds when /health first answered 200 after the last start
        self.ready_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WorkerProcess":
        env = {
            **os.environ,
            "KAFKA_BROKER": self.broker_url,
            "WEB_PORT": str(self.port),
            "DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "--quiet", "-A", self.app, "worker", "-l", "info",
             "--web-port", str(self.port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 90.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; log: {self.log_path}\n{self.tail()}")
            try:
                status, _ = http_get(f"{self.url}/health", timeout=2)
                if status == 200:
                    self.ready_at = time.time()
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"worker not ready in {timeout}s; log: {self.log_path}\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is flushed or committed."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        return http_get(f"{self.url}/metrics")[1].decode()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


#: sample-name suffixes a family of each type exports (prometheus_client's text format)
_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum", "_created"), "summary": ("_count", "_sum", "_created"),
             "counter": (), "gauge": (), "info": (), "stateset": (), "gaugehistogram": (),
             "unknown": ()}


def metric_names(text: str) -> set[str]:
    """Every sample name ``text`` can hold: each ``# TYPE`` family's own name and its
    type's suffixes, and every sample actually present. A labelled family with no
    child yet has a ``# TYPE`` line and no samples: its name is known, its value 0."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                family, kind = parts[2], parts[3]
                names.add(family)
                names.update(family + s for s in _SUFFIXES.get(kind, ()))
                if kind == "counter" and family.endswith("_total"):
                    names.add(family[: -len("_total")] + "_created")
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``.

    A name the exposition does not export at all raises ``KeyError``, and so does a
    label no sample of ``name`` carries: a misspelt name would otherwise read as 0 and
    make every ``== 0`` check on it vacuous (issue 26). A known family with no
    matching sample is 0."""
    if name not in metric_names(text):
        close = sorted(n for n in metric_names(text) if n.split("_")[0] == name.split("_")[0])
        raise KeyError(f"no metric {name!r} in the exposition (same prefix: {close[:10]})")
    total = 0.0
    label_keys: set[str] = set()
    seen = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        seen = True
        label_keys.update(k for k in labels if f'{k}="' in head)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    if seen and set(labels) - label_keys:
        raise KeyError(f"no sample of {name!r} has the label(s) {sorted(set(labels) - label_keys)}")
    return total


class HealthProbe:
    """``GET /health`` every ``interval`` seconds in a thread; every answer kept."""

    def __init__(self, url: str, interval: float = 0.25) -> None:
        self.url = url.rstrip("/") + "/health"
        self.interval = interval
        self.answers: list[tuple[float, int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = http_get(self.url, timeout=5)
            except OSError as exc:
                status, body = 0, repr(exc).encode()
            self.answers.append((time.time(), status, body))
            self._stop.wait(self.interval)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def failures(self) -> list[tuple[float, int, bytes]]:
        return [a for a in self.answers if a[1] != 200]
