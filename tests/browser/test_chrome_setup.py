"""The browser tests' setup rules (tests/browser/chrome.py), without a browser: a missing
Chromium fails unless skipped on purpose, and screenshots stay out of the work tree
unless a refresh of docs/console/ is asked for."""

from __future__ import annotations

import pytest

from tests.browser import chrome


def test_a_missing_chromium_fails_unless_skipping_is_asked_for(monkeypatch):
    monkeypatch.setattr(chrome, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv(chrome.SKIP_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="ensure-system-packages"):
        chrome.browser()
    monkeypatch.setenv(chrome.SKIP_ENV, "1")
    with pytest.raises(pytest.skip.Exception):
        chrome.browser()


def test_screenshots_go_to_docs_only_when_asked(monkeypatch):
    monkeypatch.delenv(chrome.SHOTS_ENV, raising=False)
    assert chrome.tracked_shots() is None
    monkeypatch.setenv(chrome.SHOTS_ENV, "1")
    assert chrome.tracked_shots() is None
    monkeypatch.setenv(chrome.SHOTS_ENV, "docs")
    assert chrome.tracked_shots() == chrome.ROOT / "docs" / "console"
