"""Headless system Chromium driven by Selenium (no browser downloads; see scripts/setup_browser.sh)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("HEADMINE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("HEADMINE_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: run scripts/setup_browser.sh (Debian chromium + chromium-driver)"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):  # CI installs the browser (.ci/run): a missing one is a failure there
            pytest.fail(reason)
        pytest.skip(reason)
    from tests.browser.screenshot import make_driver

    profile = tempfile.mkdtemp(prefix="headmine-chromium-")
    driver = make_driver(CHROMIUM, CHROMEDRIVER, profile)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
