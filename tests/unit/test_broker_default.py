"""The suite's broker is Apache Kafka by default, and a test on it needs Java (issue 19, item 3).

The rule (tests/conftest.py): the ``broker`` fixture — and ``worker_factory`` through it — is
the session's Apache Kafka unless ``TEST_BROKER=tansu``; a test that reaches Kafka through
it carries ``needs("java")`` as one on ``kafka`` does, so ``pytest -m "not needs"`` (what
runs anywhere) leaves it out, and where Java is missing it fails in one line naming Java,
never silently skipped. The hazard these tests cause: a machine without Java, a test that
asks only for ``worker_factory``.

Each case runs pytest in a subprocess on a one-test module with tests/conftest.py loaded
as a plugin, on a PATH without ``java`` (JAVA_HOME unset): nothing starts a JVM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST = "def test_uses_a_worker(worker_factory):\n    assert worker_factory\n"


def run_pytest(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_one.py").write_text(TEST)
    bin_dir = tmp_path / "bin"  # only this Python on PATH: no java
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    clean = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "TEST_BROKER")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path), "-c", str(ROOT / "pyproject.toml"), *args, str(tmp_path / "test_one.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**clean, "PATH": str(bin_dir), "PYTHONPATH": str(ROOT), **env})


def test_without_java_a_broker_test_fails_in_one_line_naming_java(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "-rE")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 error" in out, out  # failed in its set-up, before anything started
    assert "test_one.py::test_uses_a_worker needs java, which is not installed: " in out, out
    assert "Traceback" not in out, out


def test_a_broker_test_is_not_among_those_that_need_no_program(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "-m", "not needs")
    out = result.stdout + result.stderr
    assert "1 deselected" in out and "passed" not in out and "failed" not in out, out

