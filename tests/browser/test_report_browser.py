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


def _example(driver, name: str):
    """The head page's attention example box titled ``name``."""
    boxes = driver.find_elements("css selector", "#head-view .attn-example")
    return next(b for b in boxes if b.find_element("css selector", "h4").text == name)


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


def _set_width(driver, width: int) -> None:
    driver.set_window_size(width, 1000)


def _fits(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_heatmaps_render_and_hover_shows_meaning_and_rank(browser, report):
    _open(browser, report["page"])
    n_maps = len(browser.find_elements("css selector", "div.heatmap[data-series] svg.heatmap"))
    assert n_maps >= 10  # 5 detectors + 4 IOI methods + 3 CHG F/N/I (+ folded maps)
    div = _series_div(browser, "induction · score")
    cells = div.find_elements("css selector", "rect.cell")
    assert len(cells) == 4 * 6
    assert len({c.get_attribute("fill") for c in cells}) > 5, "cells should be coloured by value"
    _hover(browser, div.find_element("css selector", 'rect.cell[data-i="2"][data-j="1"]'))
    tip = browser.find_element("id", "tooltip")
    assert tip.is_displayed()
    assert "L2H1" in tip.text and "induction · score" in tip.text and "rank 2 of 24" in tip.text
    assert "role: Induction Head (confirmed)" in tip.text
    # a negative effect: ablating L3H4 lowers the logit difference, and that ranks it first
    ablation = _series_div(browser, "ablation_mean · delta_logit_diff [ioi]")
    browser.execute_script("arguments[0].scrollIntoView()", ablation)
    _hover(browser, ablation.find_element("css selector", 'rect.cell[data-i="3"][data-j="4"]'))
    text = browser.find_element("id", "tooltip").text
    assert "ablating the head lowers the IO − S logit difference by 2.4 logits" in text
    assert "rank 1 of 24 by |value| · 100th percentile" in text
    assert browser.find_elements("css selector", "div.curve svg path")


def test_role_map_shows_confirmed_roles_only(browser, report):
    _open(browser, report["page"])
    confirmed = browser.find_elements("css selector", "table.roles a.role")
    assert sorted(a.get_attribute("data-head") for a in confirmed) == ["L2H1", "L3H4"]
    assert {a.text for a in confirmed} == {"Induction"}
    failed = browser.find_element("css selector", "table.roles a[data-head='L1H2']")
    assert failed.text == "?" and "mark" in failed.get_attribute("class")
    assert "Previous Token Head" in failed.get_attribute("title") and "causal check failed" in failed.get_attribute("title")
    sink = browser.find_element("css selector", "table.roles a[data-head='L0H0']")
    assert sink.text == "?" and "no causal check" in sink.get_attribute("title")
    assert browser.find_element("id", "card-confirmed").text.startswith("2\n")
    checks = browser.find_element("css selector", "table.checks").text
    assert "Pass rule" in browser.find_element("id", "types").text
    assert "raise it (hurt)" in checks and "18.3" in checks and "check failed" in checks


def test_head_pages_title_rank_and_percentile(browser, report):
    _open(browser, report["page"])
    browser.get(report["page"].as_uri() + "#head/L3H4")
    assert browser.find_element("id", "head-title").text == "Head L3H4 — Induction Head (confirmed)"
    summary = browser.find_element("id", "head-summary").text
    assert "Confirmed: Induction Head" in summary and "18.3 sd above random heads" in summary
    assert "ablating the head lowers the IO − S logit difference by 2.4 logits — rank 1 of 24 by |value| · 100th percentile" in summary
    rows = {r.find_element("css selector", "td").text: r for r in browser.find_elements("css selector", "table.head-scores tr[data-key]")}

    def cells(prefix: str) -> list[str]:
        row = next(r for k, r in rows.items() if k.startswith(prefix))
        return [td.text for td in row.find_elements("css selector", "td")]

    abl = cells("ablation_mean · delta_logit_diff [ioi]")
    assert abl[1] == "-2.4 ± 0.01" and abl[2].startswith("ablating the head lowers") and abl[3] == "1 / 24" and abl[4] == "100th"
    dla = cells("dla · dla_logit_diff [ioi]")
    assert dla[2] == "its direct output raises the IO − S logit difference by 1.92 logits" and dla[3] == "1 / 24"
    # tied values: 23 heads score exactly 0 on retrieval; they share rank 2 and the middle percentile
    browser.get(report["page"].as_uri() + "#head/L0H0")
    assert browser.find_element("id", "head-title").text == "Head L0H0 — no confirmed role"
    rows = {r.find_element("css selector", "td").text: r for r in browser.find_elements("css selector", "table.head-scores tr[data-key]")}
    retr = cells("retrieval · score")
    assert retr[3] == "2 / 24 (tied with 22)" and retr[4] == "48th"
    browser.get(report["page"].as_uri() + "#head/L1H2")
    assert browser.find_element("id", "head-title").text == "Head L1H2 — no confirmed role"
    assert "Evidence only: Previous Token Head" in browser.find_element("id", "head-summary").text
    assert "causal check failed" in browser.find_element("css selector", "table.head-labels tr.evidence").text


def test_method_agreement_aligns_signs(browser, report):
    _open(browser, report["page"])
    table = browser.find_element("css selector", "#task-ioi table.agree")
    head = [th.text for th in table.find_elements("css selector", "tr:first-child th")][1:]
    assert head == ["ablation_mean", "patching_noising", "attribution", "dla"]

    def cell(i: int, j: int):
        return table.find_element("css selector", f'td.agree-cell[data-i="{i}"][data-j="{j}"]')

    # ablation (negative effects) and DLA (positive) agree once signs are aligned
    assert cell(0, 1).text.splitlines() == ["6/6", "ρ 1 · n 6"]
    assert cell(0, 2).text.startswith("6/6")
    assert cell(0, 3).text.splitlines()[0] == "3/6" and "weak" not in cell(0, 3).get_attribute("class")
    assert "3 of the top-6 shared" in cell(0, 3).get_attribute("title")
    top = browser.find_elements("css selector", "#task-ioi table.task-top tr td:first-child")
    assert top[0].text.startswith("L3H4")


def test_colour_bars_share_scales_and_mark_zero(browser, report):
    _open(browser, report["page"])
    ioi = browser.find_elements("css selector", "#task-ioi .task-maps figure")
    assert len(ioi) == 4
    ranges = [f.find_element("css selector", ".range").text for f in ioi]
    assert all("scale -2.52 to 2.52 logits (importance), shared by 4 maps" in r for r in ranges), ranges
    assert "this map: min" in ranges[0] and "max 2.4 " in ranges[0]  # its own range, not the scale's
    for f in ioi:
        labels = [t.text for t in f.find_elements("css selector", "svg.colourbar text.tick-label")]
        assert "0" in labels and "2" in labels and "-2" in labels
        assert f.find_elements("css selector", "svg.colourbar line.zero")
    # all detector maps share one score scale, so a weak detector looks weak
    scan = [f.find_element("css selector", ".range").get_attribute("textContent")
            for f in browser.find_elements("css selector", "#types .type-card figure")]
    scales = {r.split(" · ")[1] for r in scan}
    assert len(scales) == 1 and "shared by 5 maps" in scales.pop()


def test_no_horizontal_overflow_at_800px(browser, report):
    _set_width(browser, 800)
    try:
        _open(browser, report["page"])
        assert _fits(browser)
        for hid in ("L2H1", "L3H4", "L0H0"):
            browser.get(report["page"].as_uri() + f"#head/{hid}")
            assert _fits(browser), hid
        _open(browser, report["files"].index)
        assert _fits(browser)
    finally:
        _set_width(browser, 1400)


def test_keyboard_jump_box_and_attention_view(browser, report, artifacts_dir):
    from selenium.webdriver.common.keys import Keys

    _open(browser, report["page"])
    svg = _series_div(browser, "induction · score").find_element("css selector", "svg.heatmap")
    browser.execute_script("arguments[0].focus()", svg)
    svg.send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN, Keys.ARROW_RIGHT)
    assert svg.get_attribute("data-at") == "2,1"
    assert "L2H1" in browser.find_element("id", "tooltip").text
    svg.send_keys(Keys.ENTER)
    assert browser.current_url.endswith("#head/L2H1")
    assert browser.find_element("id", "head-title").text == "Head L2H1 — Induction Head (confirmed)"
    view = _example(browser, "repeated <tokens>")
    tokens = view.find_elements("css selector", ".tokens span.tok")
    assert len(tokens) == 14  # 12 words, a bidi override and a 3000-character token
    readout = view.find_element("css selector", ".readout")
    assert readout.text.startswith("query 13")  # the final query token is preselected
    assert "query" in tokens[13].get_attribute("class")
    assert tokens[13].size["width"] < 400 and tokens[13].get_attribute("textContent") == "x" * 3000
    _hover(browser, tokens[9])
    assert readout.text.startswith("query 9") and "attends to" in readout.text
    assert "rgba(214, 39, 40" in tokens[4].get_attribute("style")  # the induction target lights up
    _hover(browser, view.find_element("css selector", '.attn-matrix rect.cell[data-i="9"][data-j="4"]'))
    assert "weight 0.85" in browser.find_element("id", "tooltip").text
    first = view.find_element("css selector", '.attn-matrix rect.cell[data-i="0"][data-j="0"]')
    assert first.get_attribute("fill") != "#eeeeee"
    toggle = browser.find_element("id", "hide-first")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", toggle)
    toggle.click()
    view = _example(browser, "repeated <tokens>")  # redrawn without the first-token column
    first = view.find_element("css selector", '.attn-matrix rect.cell[data-i="0"][data-j="0"]')
    assert first.get_attribute("fill") == "#eeeeee"
    assert "@0" not in view.find_element("css selector", ".readout").text
    browser.save_screenshot(str(artifacts_dir / "report-head.png"))
    # jump-to-head box, back link, and role-map navigation
    box = browser.find_element("id", "jump-input")
    box.send_keys("l3 h4", Keys.ENTER)
    assert browser.current_url.endswith("#head/L3H4")
    box.clear()
    box.send_keys("L9H9", Keys.ENTER)
    assert "no such head" in browser.find_element("id", "jump-msg").text
    browser.execute_script("window.scrollTo(0, 0)")
    browser.find_element("css selector", "a.back").click()
    assert browser.find_element("id", "main").is_displayed()
    browser.execute_script("document.getElementById('roles').scrollIntoView()")
    browser.find_element("css selector", "table.roles a[href='#head/L1H2']").click()
    assert browser.find_element("id", "head-title").text.startswith("Head L1H2")
    assert _console_errors(browser) == []


def test_chg_fit_without_convergence_is_evidence(browser, report):
    _open(browser, report["page"])
    chg = browser.find_element("id", "chg").text
    assert "Convergence not recorded by this run" in chg and "F = G⁻" in chg
    browser.get(report["page"].as_uri() + "#head/L2H1")
    labels = browser.find_element("css selector", "table.head-labels").text
    assert "facilitating" in labels and "CHG convergence not recorded" in labels


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


def test_csp_refuses_a_smuggled_inline_script(browser, report, tmp_path):
    """Were a string ever to escape escaping, the page's CSP (script-src = the hash of our one script)
    stops it: a copy of the page with an injected inline script and an onerror handler still works,
    and neither injected script runs."""
    html = report["page"].read_text(encoding="utf-8")
    evil = ('<script>document.body.setAttribute("data-pwned", "1")</script>'
            '<img src="data:," onerror="document.body.setAttribute(\'data-pwned\', \'2\')">')
    tampered = tmp_path / "tampered.html"
    tampered.write_text(html.replace("<body>", "<body>" + evil, 1), encoding="utf-8")
    _open(browser, tampered)  # our own script still ran (it sets data-ready)
    assert browser.find_element("css selector", "body").get_attribute("data-pwned") is None
    assert any("Content Security Policy" in e["message"] for e in browser.get_log("browser"))


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


def test_head_page_shows_attention_and_promoted_tokens_of_a_causal_top_head(browser, report):
    from tests.browser.synthetic_atlas import IOI_PROMOTES, IOI_TOKENS

    _open(browser, report["page"])
    browser.get(report["page"].as_uri() + "#head/L3H4")
    summary = browser.find_element("id", "head-summary").text
    assert 'Attends most (names, final token " to"): " Mary"@2 0.8' in summary
    assert "Promotes (logit lens of its OV output at the final token of names): " + ", ".join(
        json.dumps(t) for t in IOI_PROMOTES) in summary
    names = _example(browser, "names")
    assert names.find_element("css selector", ".prompt").text.startswith("When Mary and John")  # the input as text
    readout = names.find_element("css selector", ".readout")
    assert readout.text.startswith(f"query {len(IOI_TOKENS) - 1} " + json.dumps(IOI_TOKENS[-1]))  # final query preselected
    assert json.dumps(" Mary") + "@2 0.8" in readout.text.split("attends to:")[1].split(",")[0]
    # a head in CHG's and the methods' top 20 that no run stored examples for says so, and why
    browser.get(report["page"].as_uri() + "#head/L0H5")
    missing = browser.find_element("id", "attn-missing").text
    assert missing.startswith("This head is in the top 20 of ") and "chg · F [natural_text]" in missing
    assert "Promoted tokens: not in this atlas" in browser.find_element("id", "head-summary").text


def test_three_questions_take_one_action_each(browser, report):
    """Issue 16's questions, answered from the overview with one click (or one typed head) each."""
    from selenium.webdriver.common.keys import Keys

    # 1. which are the induction heads, and how sure are we? (one click on the overview's question line)
    _open(browser, report["page"])
    browser.find_element("css selector", "#overview p.hint a[href='#type-induction-head']").click()
    card = browser.find_element("id", "type-induction-head")
    assert "Confirmed heads (2): L3H4" in card.text and "margin 18.3 sd" in card.text
    # 2. what does L3H4 do? (type it into the jump box)
    _open(browser, report["page"])
    browser.find_element("id", "jump-input").send_keys("L3H4", Keys.ENTER)
    summary = browser.find_element("id", "head-summary").text
    assert "Confirmed: Induction Head" in summary and "rank 1 of 24" in summary and "Promotes" in summary
    # 3. which heads matter for IOI, and do the methods agree? (one click)
    _open(browser, report["page"])
    browser.find_element("css selector", "#overview p.hint a[href='#task-ioi']").click()
    panel = browser.find_element("id", "task-ioi")
    assert len(panel.find_elements("css selector", ".task-maps figure")) == 4
    assert panel.find_element("css selector", "table.task-top tr:nth-child(2) td").text.startswith("L3H4")
    assert panel.find_element("css selector", 'td.agree-cell[data-i="0"][data-j="3"]').text.startswith("3/6")
