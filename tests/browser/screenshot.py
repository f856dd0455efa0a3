"""Screenshot a report page with the system Chromium (for docs/report.png after `headmine mine`).

    python -m tests.browser.screenshot headmine-out/report/smollm2.html docs/report.png [--section heatmaps]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage")


def make_driver(chromium: str, chromedriver: str, profile: str, *, size: str = "1400,1000", logs: bool = True):
    """A headless Selenium Chrome driver on the system Chromium with a fresh profile folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--window-size={size}", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    if logs:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--section", default=None, help="element id to scroll to (heatmaps, roles, agreement, ...)")
    ap.add_argument("--hash", default="", help="URL fragment, e.g. '#head/L17H3' for a head page")
    ap.add_argument("--size", default="1400,1000")
    args = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="headmine-shot-")
    driver = make_driver("/usr/bin/chromium", "/usr/bin/chromedriver", profile, size=args.size, logs=False)
    try:
        driver.get(args.page.resolve().as_uri() + args.hash)
        if args.section:
            driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", args.section)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(args.out)


if __name__ == "__main__":
    main()
