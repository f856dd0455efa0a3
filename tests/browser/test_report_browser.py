"""The HTML report in headless Chromium: offline, no console errors, heatmaps, hover, head pages, escaping."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from headmine.report import build_report
from tests.browser.synthetic_atlas import EVIL, build_synthetic_atlas

pytestmark = pytest.mark.browser
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "report.png"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("report")
    ids = build_synthetic_atlas(root / "atlas.db")
    files = build_report(root / "atlas.db", root / "out", compare=(ids["scan"], ids["scan_b"]))
    return {"ids": ids, "files": files, "page": files.pages["synthetic-llama"], "compare": files.compare[0]}


def _open(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop earlier entries
    driver.get_log("performance")
    driver.get(path.as_uri())
    WebDriverWait(driver, 10).until(lambda d: d.find_element("css selector", "body").get_attribute("data-ready") == "1")


def _console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _series_div(driver, caption_start: str):
    for fig in driver.find_elements("css selector", "figure.hm-card"):
        if fig.find_element("css selector", "figcaption").text.startswith(caption_start):
            return fig.find_element("css selector", "div.heatmap")
    raise AssertionError(f"no heatmap captioned {caption_start!r}")


def _hover(driver, element) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(element).perform()


def test_opens_offline_with_no_console_errors(browser, report, artifacts_dir):
    _open(browser, report["page"])
    urls = _requested_urls(browser)
    assert urls, "the performance log recorded no request at all (is logging on?)"
    assert all(u.startswith(("file:", "data:")) for u in urls), urls
    remote = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !/^(data|file):/.test(n));"
    )
    assert remote == []
    assert _console_errors(browser) == []
    html = report["page"].read_text(encoding="utf-8")
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").split("<body>")[0]
    assert " src=" not in html and "<link rel=\"stylesheet\"" not in html
    browser.save_screenshot(str(artifacts_dir / "report-overview.png"))
    if os.environ.get("HEADMINE_UPDATE_SCREENSHOT"):
        shutil.copyfile(artifacts_dir / "report-overview.png", DOCS_SCREENSHOT)


def test_heatmaps_render_and_hover_shows_value(browser, report):
    _open(browser, report["page"])
    n_maps = len(browser.find_elements("css selector", "div.heatmap[data-series] svg"))
    assert n_maps >= 10  # 4 detectors (+ NaN demo) + ablation + patching + 6 CHG metrics
    div = _series_div(browser, "induction · score")
    cells = div.find_elements("css selector", "rect.cell")
    assert len(cells) == 4 * 6
    fills = {c.get_attribute("fill") for c in cells}
    assert len(fills) > 5, "cells should be coloured by value"
    cell = div.find_element("css selector", 'rect.cell[data-i="2"][data-j="1"]')
    _hover(browser, cell)
    tip = browser.find_element("id", "tooltip")
    assert tip.is_displayed()
    text = tip.text
    assert "L2H1" in text and "induction · score" in text and "value 0." in text and ("rank 1 of 24" in text or "rank 2 of 24" in text)
    assert "Induction Head" in text
    # curves (CHG loss) and the agreement table render too
    assert browser.find_elements("css selector", "div.curve svg path")
    assert len(browser.find_elements("css selector", "table.agree td.rho")) >= 9


def test_click_opens_head_page_with_attention(browser, report, artifacts_dir):
    _open(browser, report["page"])
    cell = _series_div(browser, "induction · score").find_element("css selector", 'rect.cell[data-i="2"][data-j="1"]')
    cell.click()
    view = browser.find_element("id", "head-view")
    assert view.is_displayed()
    assert not browser.find_element("id", "main").is_displayed()
    assert browser.current_url.endswith("#head/L2H1")
    assert browser.find_element("id", "head-title").text.startswith("Head L2H1 — Induction Head")
    assert "Induction Head" in view.find_element("css selector", "table.head-labels").text
    assert len(view.find_elements("css selector", "table.head-scores tr")) > 10
    assert view.find_elements("css selector", "ul.papers li a[href^='https://arxiv.org/abs/']")
    tokens = view.find_elements("css selector", ".tokens span.tok")
    assert len(tokens) == 12
    _hover(browser, tokens[9])
    readout = view.find_element("css selector", ".readout").text
    assert readout.startswith("query 9") and "attends to" in readout
    assert "rgba(214, 39, 40" in tokens[4].get_attribute("style")  # the induction target lights up
    matrix_cell = view.find_element("css selector", '.attn-matrix rect.cell[data-i="9"][data-j="4"]')
    _hover(browser, matrix_cell)
    assert "weight 0.85" in browser.find_element("id", "tooltip").text
    browser.save_screenshot(str(artifacts_dir / "report-head.png"))
    # role map navigation and back
    browser.execute_script("window.scrollTo(0, 0)")  # the sticky header covers links Selenium scrolls to the top
    browser.find_element("css selector", "a.back").click()
    assert browser.find_element("id", "main").is_displayed()
    browser.execute_script("document.getElementById('roles').scrollIntoView()")
    browser.find_element("css selector", "table.roles a[href='#head/L1H2']").click()
    assert browser.find_element("id", "head-title").text.startswith("Head L1H2")
    assert _console_errors(browser) == []


def test_hostile_strings_render_as_text(browser, report):
    from selenium.common.exceptions import NoAlertPresentException

    _open(browser, report["page"])
    browser.get(report["page"].as_uri() + "#head/L1H2")
    browser.refresh()
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert.text
    assert browser.execute_script("return document.scripts.length") == 2  # the data block and our script
    view = browser.find_element("id", "head-view")
    assert "<script>alert(1)</script>" in view.find_element("css selector", ".attn-example .prompt").text
    assert "<script>alert(1)</script>" in view.find_element("css selector", "table.head-labels").text
    tokens = [t.text for t in view.find_elements("css selector", ".tokens span.tok")]
    assert " <b>" in [t for t in tokens if "<b>" in t] or "<b>" in tokens
    assert not view.find_elements("css selector", "b")  # no element injected from the token " <b>"
    browser.get(report["page"].as_uri() + "#runs")
    runs_text = browser.find_element("id", "runs").text
    assert "synthetic scan <script>alert(1)</script>" in runs_text
    assert _console_errors(browser) == []
    assert EVIL.startswith("<script>")


def test_comparison_and_index_pages(browser, report):
    _open(browser, report["compare"])
    assert len(browser.find_elements("css selector", "div.heatmap[data-side] svg")) >= 3
    diff = browser.find_elements("css selector", "div.heatmap[data-side='diff'] rect.cell")
    assert diff
    _hover(browser, diff[0])
    assert "B − A" in browser.find_element("id", "tooltip").text
    assert _console_errors(browser) == []
    _open(browser, report["files"].index)
    links = browser.find_elements("css selector", "#models a")
    assert {a.text for a in links} >= {"synthetic-llama", "synthetic-gpt2", "other/small model"}
    next(a for a in links if a.text == "other/small model").click()
    assert "other/small model" in browser.find_element("css selector", "header h1").text
    assert _console_errors(browser) == []
