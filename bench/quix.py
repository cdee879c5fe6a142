"""Quix Streams for the dedup-and-forward comparison, in a virtualenv of its own.

``quixstreams==3.28.1`` requires ``pydantic<2.14`` and ``pydantic-settings<2.16``;
the project's venv has newer ones (2.14.x / 2.16.x), so installing Quix there (as the
``bench`` extra once did) would downgrade the worker's own dependencies under every
other test. Quix therefore runs from ``~/.cache/order-streams/quix-<version>`` (made
on first use with ``python -m venv`` and ``pip install quixstreams==<version>``;
``bench/quix_dedup.py`` needs nothing but Quix). When that cannot be made, the pair
is reported as not run, with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.quix_dedup import QUIXSTREAMS_VERSION

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "order-streams"


def quix_python() -> tuple[str | None, str]:
    """(the Quix venv's python, "") or (None, why it is not available)."""
    venv = CACHE / f"quix-{QUIXSTREAMS_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists() and python.exists():
        return str(python), ""
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True,
                           text=True, timeout=300)
        out = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"quixstreams=={QUIXSTREAMS_VERSION}"],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            return None, f"pip install quixstreams=={QUIXSTREAMS_VERSION} failed: {(out.stderr or out.stdout)[-400:]}"
        check = subprocess.run([str(python), "-c", "import quixstreams, confluent_kafka"], capture_output=True,
                               text=True, timeout=120)
        if check.returncode != 0:
            return None, f"quixstreams does not import: {check.stderr[-400:]}"
        marker.write_text(QUIXSTREAMS_VERSION + "\n")
        return str(python), ""
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not make the Quix venv: {exc}"
