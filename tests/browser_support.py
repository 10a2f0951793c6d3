"""What the browser tests share: the folder of their node scripts and the check that Chromium can be driven."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BROWSER_TESTS = Path(__file__).parent / "browser"  # node scripts, package.json (npm ci installs puppeteer-core)


def chromium() -> str:
    """Debian's Chromium, or a skip naming what is missing to drive it (chromium, node, puppeteer-core)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    if shutil.which("node") is None:
        pytest.skip("node is not installed (apt-get install nodejs npm)")
    if not (BROWSER_TESTS / "node_modules" / "puppeteer-core").is_dir():
        pytest.skip("puppeteer-core is not installed (npm ci in tests/browser)")
    return found
