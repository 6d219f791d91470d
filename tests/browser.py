"""Real headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright (never a
browser Playwright downloads). Missing fails under CI=true and skips elsewhere, saying why."""

from __future__ import annotations

import os
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
LAUNCH = {"executable_path": CHROMIUM, "args": ["--no-sandbox"]}


def playwright() -> Any:
    """Playwright's sync_playwright, or fail (CI) / skip with the reason."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        problem = f"playwright is not installed: {e}"
    else:
        if os.path.exists(CHROMIUM):
            return sync_playwright
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser test cannot run under CI: {problem}")
    pytest.skip(problem)
