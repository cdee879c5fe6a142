"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run() -> None:
    blocks = python_blocks()
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_opens_with_run_and_test_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands[:2] == ["make run", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


ENSURE = README.parent / "scripts" / "ensure-system-packages"


def ensure_dry_run(root: Path, *present: str) -> list[str]:
    """What ``make test``'s package step would install on a machine that has only ``present``."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for path in present:
        exe = root / path.lstrip("/")
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    result = subprocess.run(
        ["/bin/bash", str(ENSURE), "--dry-run"], capture_output=True, text=True, timeout=30,
        env={"PATH": str(root / "usr" / "bin"), "SYSROOT": str(root)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_make_test_installs_chromium_and_its_driver_for_the_browser_tests(tmp_path: Path) -> None:
    makefile = (README.parent / "Makefile").read_text()
    assert "./scripts/ensure-system-packages" in makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    bare = ensure_dry_run(tmp_path / "bare")
    assert {"chromium", "chromium-driver", "postgresql", "prometheus", "curl", "faketime", "wrk"} <= set(bare)
    with_browser = ensure_dry_run(tmp_path / "browser", "/usr/bin/chromium", "/usr/bin/chromedriver")
    assert "chromium" not in with_browser and "chromium-driver" not in with_browser
    only_browser = ensure_dry_run(tmp_path / "driverless", "/usr/bin/chromium")
    assert "chromium" not in only_browser and "chromium-driver" in only_browser
    everything = ensure_dry_run(
        tmp_path / "full", "/usr/bin/chromium", "/usr/bin/chromedriver", "/usr/bin/prometheus",
        "/usr/bin/promtool", "/usr/bin/curl", "/usr/lib/postgresql/15/bin/initdb",
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/bin/wrk")
    assert everything == [], "nothing is installed when nothing is missing"
