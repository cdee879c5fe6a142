"""``python -m streams.broker --kafka``: Apache Kafka as the project runs it.

Each test here starts its own runner process (the module, as ``make run`` does) with its
own data directory; waits are on conditions (a printed URL, a process exiting, a record
read back), bounded by deadlines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.kafka import produce, read_topic

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]


def java_pids_under(root: Path) -> list[int]:
    """Live ``java`` processes whose command line names ``root`` (a runner's data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cmdline and cmdline[0].endswith(b"java") and str(root).encode() in b" ".join(cmdline):
            found.append(int(entry.name))
    return found


def start_runner(data_dir: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "streams.broker", "--kafka", "--port", "0",
                             "--data-dir", str(data_dir), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()  # printed only once Metadata answered
    if not url:
        proc.wait(10)
        raise AssertionError(f"no URL; exit {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    return proc, url


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if Path(f"/proc/{p}").exists() and
                Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        if not left:
            return []
        time.sleep(0.1)
    return left


@pytest.mark.needs("java")
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds java processes in /proc")
async def test_runner_serves_clients_and_its_java_dies_with_it(tmp_path: Path) -> None:
    """The URL works for aiokafka at once; a SIGKILLed runner (no handler runs) takes its
    java with it. (SIGTERM, a clean stop, and data kept across runs: test_dev_run's
    Kafka test, which stops ``make run``'s runner and checks every descendant is gone.)"""
    data = tmp_path / "kafka"
    proc, url = start_runner(data)
    try:
        assert url.startswith("kafka://127.0.0.1:")
        bootstrap = url.removeprefix("kafka://")
        await produce(bootstrap, "t-runner", [(b"k1", b"first")])
        assert [r.value for r in await read_topic(bootstrap, "t-runner", expect=1)] == [b"first"]
        javas = java_pids_under(data)
        assert len(javas) == 1
        proc.kill()
        proc.wait(10)
        assert wait_gone(javas, 30) == [], "java outlived its SIGKILLed runner"
    finally:
        proc.kill()


def test_maven_unreachable_and_nothing_cached_is_one_line(tmp_path: Path) -> None:
    """A Maven whose only repository is a closed local port, an empty local repository and
    an empty jar cache: the runner says so in one line and exits 1."""
    from streams.broker import free_port

    home = tmp_path / "home"
    (home / ".m2").mkdir(parents=True)
    (home / ".m2" / "settings.xml").write_text(f"""<settings>
  <localRepository>{home / 'repo'}</localRepository>
  <mirrors><mirror><id>nowhere</id><mirrorOf>*</mirrorOf>
    <url>http://127.0.0.1:{free_port()}/maven2</url></mirror></mirrors>
</settings>""")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "MAVEN_OPTS": f"-Duser.home={home}"}
    result = subprocess.run([sys.executable, "-m", "streams.broker", "--kafka", "--port", "0",
                             "--data-dir", str(tmp_path / "k")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("fetching Apache Kafka"), result.stderr
    assert len(lines) == 2, result.stderr
    assert "could not fetch Apache Kafka" in lines[1] and "none is cached" in lines[1]
    from streams.broker import KAFKA_VERSION

    assert not (tmp_path / "cache" / "order-streams" / f"kafka-{KAFKA_VERSION}").exists()
