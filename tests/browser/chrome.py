"""A real headless Chromium for the console's browser tests (Debian's ``chromium``
and ``chromium-driver``; ``scripts/ensure-system-packages`` installs them).

Without them the browser tests *fail* (``make test`` installs them, so a missing
browser is a broken setup, not a reason to pass): set ``SKIP_BROWSER_TESTS=1`` to skip
them on purpose instead.

Screenshots go to a temporary folder (printed at the end of the run), so a test run
leaves the work tree clean. ``CONSOLE_SCREENSHOTS=docs .venv/bin/python -m pytest
tests/browser`` refreshes the tracked ones in ``docs/console/`` (the README shows them).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
DOCS_SHOTS = ROOT / "docs" / "console"
#: the opt-out: without it a missing Chromium fails the browser tests
SKIP_ENV = "SKIP_BROWSER_TESTS"
#: ``docs``: screenshots refresh docs/console/; anything else (or unset): a temporary folder
SHOTS_ENV = "CONSOLE_SCREENSHOTS"
WAIT = 30
_shots: Path | None = None


def tracked_shots() -> Path | None:
    """docs/console/ when ``CONSOLE_SCREENSHOTS=docs`` asks for a refresh, else None."""
    return DOCS_SHOTS if os.environ.get(SHOTS_ENV) == "docs" else None


def shots_dir() -> Path:
    """Where :func:`screenshot` writes: docs/console/ only when asked to, else a
    temporary folder made on the first screenshot (named at the end of the run)."""
    global _shots
    if _shots is None:
        if tracked_shots() is not None:
            _shots = DOCS_SHOTS
            _shots.mkdir(parents=True, exist_ok=True)
        else:
            _shots = Path(tempfile.mkdtemp(prefix="console-screenshots-"))
            note = f"console screenshots: {_shots} ({SHOTS_ENV}=docs refreshes {DOCS_SHOTS.relative_to(ROOT)}/)\n"
            atexit.register(lambda: sys.__stderr__ and sys.__stderr__.write(note))  # after pytest's capture
    return _shots


def require_chromium() -> None:
    """Fail (or, with ``SKIP_BROWSER_TESTS=1``, skip) when the browser is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    message = (f"{', '.join(missing)} missing: run scripts/ensure-system-packages "
               f"(make test does), or set {SKIP_ENV}=1 to skip the browser tests")
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def browser() -> Any:
    """A fresh headless Chromium (its own profile directory) driven by Selenium."""
    require_chromium()
    from selenium import webdriver  # the [test] extra: a missing one is an error, not a skip
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="console-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1360,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    original_quit = driver.quit

    def quit() -> None:
        try:
            original_quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit
    return driver


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = WAIT, message: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def screenshot(driver: Any, name: str, max_height: int = 2400) -> None:
    """The page down to ``max_height`` CSS pixels (not only the window) into
    ``<shots_dir()>/<name>.png``, through the DevTools protocol."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    height = int(min(max(size["height"], 700), max_height))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1360, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        assert driver.save_screenshot(str(shots_dir() / f"{name}.png")), name
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
