"""Screenshot a report page with the system Chromium (for docs/report.png after `headmine mine`), or
the four views of issue 16 (role map, IOI panel, head page L23H3, method agreement) in one go.

    python -m tests.browser.screenshot headmine-out/report/smollm2.html docs/report.png [--section roles]
    python -m tests.browser.screenshot --views after headmine-out/report/smollm2.html docs/report/

``--views PREFIX`` writes ``PREFIX-roles.png``, ``PREFIX-ioi.png``, ``PREFIX-head-L23H3.png`` and
``PREFIX-agreement.png``. Each view is found by the first selector of ``VIEWS`` that the page has
(the report's layout before issue 16 included), scrolled to the top of a fixed-size window, and
shot; Pillow (when installed) then cuts the PNG to 256 colours to keep it small.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage")
SHOT_ARGS = ("--hide-scrollbars", "--force-device-scale-factor=1")

VIEWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (name, URL fragment, selectors in order of preference: the current report's, then the old one's;
    # "caption:TEXT" = the first map whose caption holds TEXT, from the heading above its grid)
    ("roles", "", ("#roles",)),
    ("ioi", "", ("#task-ioi", "caption:[ioi]")),
    ("head-L23H3", "#head/L23H3", ("#head-view",)),
    ("agreement", "", ("#task-ioi-agreement", "#agreement")),
)

_SCROLL_TO = """
const [sels] = arguments;
function find(sel) {
  if (!sel.startsWith('caption:')) { return document.querySelector(sel); }
  const fig = [...document.querySelectorAll('figure')].find(f => f.querySelector('figcaption') &&
    f.querySelector('figcaption').textContent.includes(sel.slice(8)));
  if (!fig) { return null; }
  const grid = fig.parentElement, before = grid && grid.previousElementSibling;
  return before && /^H[2-4]$/.test(before.tagName) ? before : fig;
}
for (const sel of sels) {
  const e = find(sel);
  if (e) {
    const header = document.querySelector('header.top');
    const pad = header && getComputedStyle(header).position === 'sticky' ? header.offsetHeight + 6 : 6;
    window.scrollTo(0, e.getBoundingClientRect().top + window.scrollY - pad);
    return sel;
  }
}
return null;
"""


def make_driver(chromium: str, chromedriver: str, profile: str, *, size: str = "1400,1000", logs: bool = True,
                extra: tuple[str, ...] = ()):
    """A headless Selenium Chrome driver on the system Chromium with a fresh profile folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, *extra, f"--window-size={size}", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    if logs:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))


def _open(driver, page: Path, fragment: str = "") -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    driver.get(page.resolve().as_uri() + fragment)
    WebDriverWait(driver, 30).until(lambda d: d.find_element("css selector", "body").get_attribute("data-ready") == "1")


def _shrink(path: Path) -> None:
    """Cut a screenshot to 256 colours with Pillow, when it is installed (text stays sharp)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def shoot_views(driver, page: Path, out_dir: Path, prefix: str) -> list[Path]:
    """The four issue-16 views of one report page, as ``out_dir/PREFIX-<view>.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fragment, selectors in VIEWS:
        _open(driver, page, fragment)
        found = driver.execute_script(_SCROLL_TO, list(selectors))
        if found is None:
            print(f"{name}: none of {selectors} on {page}; skipped")
            continue
        path = out_dir / f"{prefix}-{name}.png"
        driver.save_screenshot(str(path))
        _shrink(path)
        print(f"{path} ({found}, {path.stat().st_size // 1024} KB)")
        written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path, help="the PNG to write (or, with --views, the folder)")
    ap.add_argument("--section", default=None, help="element id to scroll to (roles, types, task-ioi, ...)")
    ap.add_argument("--hash", default="", help="URL fragment, e.g. '#head/L17H3' for a head page")
    ap.add_argument("--size", default="1400,1000")
    ap.add_argument("--views", metavar="PREFIX", default=None, help="write the four issue-16 views as PREFIX-<view>.png")
    args = ap.parse_args()
    profile = tempfile.mkdtemp(prefix="headmine-shot-")
    driver = make_driver("/usr/bin/chromium", "/usr/bin/chromedriver", profile, size=args.size, logs=False,
                         extra=SHOT_ARGS)
    try:
        if args.views:
            shoot_views(driver, args.page, args.out, args.views)
            return
        _open(driver, args.page, args.hash)
        if args.section:
            driver.execute_script(_SCROLL_TO, [f"#{args.section}"])
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(args.out)


if __name__ == "__main__":
    main()
