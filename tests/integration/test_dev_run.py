"""``make run`` / ``scripts/dev-run`` as a new user meets it.

Each test runs the real script from this checkout on free ports
(``BROKER_PORT``/``ORDERS_PORT``/``WEB_PORT``) with its own ``DATA_DIR`` in
``tmp_path``, so it collides neither with a developer's ``make run`` nor with other
tests. Every wait is on a condition (a port, ``GET /health``, a line of output, a
process exiting), bounded by a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port, port_free
from harness.worker import http_get

ROOT = Path(__file__).resolve().parents[2]
DEV_RUN = ROOT / "scripts" / "dev-run"
VENV_BIN = Path(sys.executable).parent

NOTICE = re.compile(r"^dev-run: new embedded broker \(memory only.*discarded", re.M)
FALLBACK = re.compile(r"^dev-run: no Java 17\+ for Apache Kafka .*using the embedded Tansu broker", re.M)


def distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout}s")


def proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time), or None when PID is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root`` (itself included): pid → start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        start = proc_start_time(pid)
        if start is not None:
            found[pid] = start
        todo.extend(children.get(pid, []))
    return found


def survivors(procs: dict[int, str]) -> list[str]:
    left = []
    for pid, start in procs.items():
        if proc_start_time(pid) == start:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                cmd = "?"
            left.append(f"{pid}: {cmd}")
    return left


def as_from_a_terminal() -> None:
    """SIGINT as a terminal leaves it (default), whatever this test process inherited: a
    runner started in the background (``cmd &`` in a script, nohup) passes SIGINT down
    *ignored*, and a shell cannot trap a signal ignored at its start — dev-run's Ctrl-C
    handling would then be untestable here (seen: this test failed when it ran first in
    such a runner, and passed when an earlier test had installed a SIGINT handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DevRun:
    """``scripts/dev-run`` (or ``make run``) in its own session, output to a log file.

    On Tansu (``BROKER=tansu``) unless a test passes ``BROKER``: only the tests about
    Kafka pay for a JVM start; ``BROKER=""`` leaves the choice to dev-run."""

    def __init__(self, tmp_path: Path, name: str, ports: list[int] | None = None,
                 data_dir: Path | None = None, command: list[str] | None = None, **env: str) -> None:
        self.broker_port, self.orders_port, self.web_port = ports or distinct_free_ports(3)
        self.data_dir = data_dir or tmp_path / "data"
        self.log_path = tmp_path / f"{name}.log"
        self.command = command or [str(DEV_RUN)]
        base = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BROKER", "DATABASE_URL")}
        self.env = {
            **base,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "BROKER_PORT": str(self.broker_port),
            "ORDERS_PORT": str(self.orders_port),
            "WEB_PORT": str(self.web_port),
            "DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
            "BROKER": "tansu",
            **env,
        }
        if not self.env["BROKER"]:
            del self.env["BROKER"]
        self.proc: subprocess.Popen[bytes] | None = None
        #: every process seen under this run (pid → start time), killed at clean-up
        self.seen: dict[int, str] = {}

    @property
    def ports(self) -> list[int]:
        return [self.broker_port, self.orders_port, self.web_port]

    def start(self) -> "DevRun":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=as_from_a_terminal)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def up(self, url: str) -> bool:
        """``GET url`` answers 200 (and this run is still running)."""
        assert self.alive(), f"{self.command[0]} exited early ({self.proc and self.proc.returncode}):\n{self.output()[-4000:]}"
        try:
            return http_get(url, timeout=2)[0] == 200
        except OSError:
            return False

    def tree(self) -> dict[int, str]:
        """This run's live process tree now (remembered for the clean-up)."""
        assert self.proc is not None
        procs = descendants(self.proc.pid)
        self.seen.update(procs)
        return procs

    def _healthy(self) -> bool:
        self.tree()
        return self.up(f"http://127.0.0.1:{self.web_port}/health")

    def wait_healthy(self, timeout: float = 75.0) -> float:
        started = time.monotonic()
        try:
            wait_for(self._healthy, timeout, "worker GET /health 200")
        except TimeoutError:
            raise TimeoutError(f"worker not healthy in {timeout}s:\n{self.output()[-4000:]}") from None
        return time.monotonic() - started

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.command} still running {timeout}s after the signal:\n"
                                 f"{self.output()[-3000:]}") from None

    def kill_all(self) -> None:
        """Test clean-up: SIGKILL whatever this run left behind."""
        if self.proc is None:
            return
        self.tree()
        for pid in self.seen:
            if proc_start_time(pid) != self.seen[pid]:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def runs() -> Iterator[list[DevRun]]:
    made: list[DevRun] = []
    yield made
    for run in made:
        run.kill_all()


def post_json(url: str, body: object) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def stop_and_check(run: DevRun, sig: int, pid: int | None = None, timeout: float = 20.0) -> float:
    """Send ``sig`` to ``pid`` (default: the run's own process); everything it started
    must be gone and every port free again within ``timeout``. Returns the seconds taken."""
    assert run.proc is not None
    procs = run.tree()
    assert len(procs) >= 4, f"expected make/dev-run, broker, order service, worker: {procs}"
    started = time.monotonic()
    os.kill(pid or run.proc.pid, sig)
    run.wait_exit(timeout)
    wait_for(lambda: not survivors(procs), timeout - (time.monotonic() - started), "every child gone", 0.1)
    elapsed = time.monotonic() - started
    assert not survivors(procs), survivors(procs)
    busy = [p for p in run.ports if not port_free(p, "0.0.0.0")]
    assert not busy, f"ports still taken after the stop: {busy}"
    return elapsed


# ---------------------------------------------------------------------------
# Two runs in a row in one checkout (the README's promise), and stopping


@pytest.mark.kafka
def test_second_run_on_tansu_starts_clean_and_gets_healthy(tmp_path: Path, runs: list[DevRun]) -> None:
    """Before: the second run crashed (Faust ``ConsistencyError (1 > -1)``) because
    ``./data`` survived while the embedded broker kept everything in memory.
    (BROKER=tansu forces Tansu where Java is present.)"""
    first = DevRun(tmp_path, "run1")
    runs.append(first.start())
    first.wait_healthy()
    assert not NOTICE.search(first.output()), "nothing to discard on a first run"
    order_id = post_json(f"http://127.0.0.1:{first.orders_port}/orders",
                         {"user_id": "u-7", "items": [{"sku": "s-1", "qty": 1}], "amount": "9.99"})["order_id"]
    wait_for(lambda: http_get(f"http://127.0.0.1:{first.web_port}/orders/{order_id}")[0] == 200,
             30, "the worker's view of the order")
    stop_and_check(first, signal.SIGTERM)  # SIGTERM to dev-run stops everything

    second = DevRun(tmp_path, "run2", ports=first.ports, data_dir=first.data_dir)
    runs.append(second.start())
    second.wait_healthy()
    notices = NOTICE.findall(second.output())
    assert len(notices) == 1, second.output()[-3000:]
    line = next(ln for ln in second.output().splitlines() if NOTICE.match(ln))
    assert str(first.data_dir) in line, line
    # the previous run's orders are gone on both sides: they belonged to the old broker
    assert http_get(f"http://127.0.0.1:{second.web_port}/orders/{order_id}")[0] == 404
    assert http_get(f"http://127.0.0.1:{second.orders_port}/orders/{order_id}")[0] == 404
    stop_and_check(second, signal.SIGINT)  # as Ctrl-C would, to dev-run alone


def fake_java(tmp_path: Path, version: str = "11.0.22") -> Path:
    """A JAVA_HOME whose ``java -version`` prints what an older JDK prints."""
    home = tmp_path / f"jdk-{version}"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f'#!/bin/sh\necho \'openjdk version "{version}" 2024-01-16\' >&2\n')
    java.chmod(0o755)
    return home


@pytest.mark.kafka
def test_second_run_on_kafka_keeps_the_first_runs_orders(tmp_path: Path, runs: list[DevRun]) -> None:
    """Where Java 17+ is found, make run is Apache Kafka with its logs in DATA_DIR: an order
    created and paid in run 1 is NOTIFIED in run 2, nothing replayed or set aside."""
    first = DevRun(tmp_path, "kafka1", BROKER="")
    runs.append(first.start())
    first.wait_healthy(timeout=150)
    assert "Apache Kafka:    kafka://127.0.0.1:" in first.output(), first.output()[-3000:]
    orders = f"http://127.0.0.1:{first.orders_port}/orders"
    order_id = post_json(orders, {"user_id": "u-7", "items": [{"sku": "s-1", "qty": 1}], "amount": "9.99"})["order_id"]
    wait_for(lambda: http_get(f"http://127.0.0.1:{first.web_port}/orders/{order_id}")[0] == 200, 30, "the order")
    post_json(f"{orders}/{order_id}/pay", {})

    def notified(run: DevRun) -> bool:
        status, body = http_get(f"http://127.0.0.1:{run.web_port}/orders/{order_id}")
        return status == 200 and json.loads(body)["status"] == "NOTIFIED"

    wait_for(lambda: notified(first), 30, "NOTIFIED in run 1")
    stop_and_check(first, signal.SIGTERM)

    second = DevRun(tmp_path, "kafka2", ports=first.ports, data_dir=first.data_dir, BROKER="")
    runs.append(second.start())
    second.wait_healthy(timeout=150)
    assert notified(second), "run 2's worker lost run 1's order"
    assert http_get(f"{orders}/{order_id}")[0] == 200, "run 2's order service lost run 1's order"
    assert "previous-run" not in second.output() and not (first.data_dir / "previous-run").exists()
    stop_and_check(second, signal.SIGINT)


@pytest.mark.kafka
def test_without_java_17_make_run_falls_back_to_tansu_in_one_line(tmp_path: Path, runs: list[DevRun]) -> None:
    run = DevRun(tmp_path, "nojava", BROKER="", JAVA_HOME=str(fake_java(tmp_path)))
    runs.append(run.start())
    wait_for(lambda: "embedded broker: kafka://" in run.output(), 30, "the Tansu broker's line")
    said = FALLBACK.findall(run.output())
    assert len(said) == 1, run.output()
    assert "Java 11" in run.output().splitlines()[0]
    assert not (run.data_dir / "kafka").exists()
    os.kill(run.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
    run.wait_exit(20)


def test_broker_kafka_without_java_17_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    run = DevRun(tmp_path, "forced", BROKER="kafka", JAVA_HOME=str(fake_java(tmp_path)))
    rc, out = run_to_exit(run)
    assert rc == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dev-run: BROKER=kafka: ") and "Java 11" in lines[0], out
    assert all(port_free(p, "0.0.0.0") for p in run.ports)


@pytest.mark.kafka
def test_sigterm_to_make_run_stops_every_process_it_started(tmp_path: Path, runs: list[DevRun]) -> None:
    """Before: make died and dev-run, the broker, the order service and the worker kept running."""
    # -o: never rebuild the venv from inside a test (``setup`` is make run's prerequisite)
    run = DevRun(tmp_path, "make", command=["make", "--no-print-directory", "-o", ".venv/.installed", "run"])
    runs.append(run.start())
    run.wait_healthy()
    elapsed = stop_and_check(run, signal.SIGTERM)
    assert elapsed < 15, f"stopping took {elapsed:.1f}s"


# ---------------------------------------------------------------------------
# Ports: checked before anything starts; never join a broker dev-run did not start


def run_to_exit(run: DevRun, timeout: float = 30.0) -> tuple[int, str]:
    run.start()
    try:
        def exited() -> bool:
            run.tree()  # remember what it started, for the clean-up
            return not run.alive()

        try:
            wait_for(exited, timeout, "dev-run exiting", 0.05)
        except TimeoutError:
            raise AssertionError(f"dev-run still running after {timeout}s:\n{run.output()[-3000:]}") from None
        rc = run.wait_exit(1)
    finally:
        run.kill_all()
    return rc, run.output()


@pytest.mark.parametrize("setting", ["BROKER_PORT", "ORDERS_PORT", "WEB_PORT"])
def test_taken_port_is_one_line_naming_its_setting_and_nothing_starts(tmp_path: Path, setting: str) -> None:
    run = DevRun(tmp_path, "taken")
    run.data_dir.mkdir()
    (run.data_dir / "previous-state").write_text("kept")
    taken = {"BROKER_PORT": run.broker_port, "ORDERS_PORT": run.orders_port, "WEB_PORT": run.web_port}[setting]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", taken))
        sock.listen()
        rc, out = run_to_exit(run)
        others = [p for p in run.ports if p != taken]
        assert all(port_free(p, "0.0.0.0") for p in others), "nothing may start when a port is taken"
    assert rc == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert str(taken) in lines[0] and setting in lines[0], lines[0]
    assert (run.data_dir / "previous-state").read_text() == "kept", "a refused run must not discard state"


@pytest.mark.kafka
def test_does_not_join_an_embedded_broker_it_did_not_start(tmp_path: Path) -> None:
    """Before: a second dev-run found the first one's broker listening, used it and
    joined the first worker's consumer group."""
    with EmbeddedBroker() as other:
        run = DevRun(tmp_path, "join")
        run.broker_port = other.port
        run.env["BROKER_PORT"] = str(other.port)
        rc, out = run_to_exit(run)
        assert other.process is not None and other.process.poll() is None
    assert rc == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert str(other.port) in lines[0] and "BROKER_PORT" in lines[0]
    assert port_free(run.orders_port) and port_free(run.web_port, "0.0.0.0")


@pytest.mark.kafka
def test_explicit_kafka_broker_is_used_and_no_embedded_broker_started(tmp_path: Path, runs: list[DevRun]) -> None:
    with EmbeddedBroker() as external:
        run = DevRun(tmp_path, "external", KAFKA_BROKER=external.url)
        run.data_dir.mkdir()
        (run.data_dir / "state").write_text("kept")
        runs.append(run.start())
        wait_for(lambda: run.up(f"http://127.0.0.1:{run.orders_port}/health"), 30, "order service")
        assert port_free(run.broker_port), "no embedded broker may be started"
        said = [ln for ln in run.output().splitlines() if "KAFKA_BROKER" in ln]
        assert said and external.url in said[0], run.output()
        assert (run.data_dir / "state").read_text() == "kept", "state is kept with a broker dev-run did not start"
        os.kill(run.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        run.wait_exit(20)


@pytest.mark.kafka
def test_broker_module_prints_its_url_once_its_own_process_listens() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streams.broker", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"kafka://127.0.0.1:{port}"
        from streams.broker import process_listens

        owners = [pid for pid in descendants(proc.pid) if process_listens(pid, port)]
        assert owners and all(pid != proc.pid for pid in owners), "Tansu (the module's child) listens"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert port_free(port)
