"""Render the figures of tutorial 01 (induction heads, toy model) to PNG for the docs, the way a notebook
shows them: the result summary, the induction heatmap (plotly) and the attention view.

    python docs/tutorials/render_figures.py docs/tutorials/figures

Uses the system Chromium in headless mode (scripts/setup_browser.sh installs it); plotly.js is inlined,
so nothing is fetched.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import headmine as hm

CHROMIUM = ("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--force-device-scale-factor=1", "--disable-dev-shm-usage")


def shoot(html: str, png: Path, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(html, encoding="utf-8")
        subprocess.run([*CHROMIUM, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
                        "--virtual-time-budget=3000", page.as_uri()], check=True, capture_output=True)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lm = hm.load("toy-induction")
    scan = hm.scan(lm, detectors=["induction", "previous_token"])
    style = "<style>body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse} td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
    shoot(f"<html><head><meta charset='utf-8'>{style}</head><body>{scan._repr_html_()}</body></html>",
          out / "01-result-summary.png", (760, 520))
    fig = scan.heatmap(method="induction")
    shoot(fig.to_html(include_plotlyjs=True, full_html=True), out / "01-induction-heatmap.png",
          (int(fig.layout.width) + 20, int(fig.layout.height) + 20))
    view = hm.show_attention(lm, "t7 t5 t9 t12 t30 t7 t5", head="L1H2")
    shoot(f"<html><head><meta charset='utf-8'>{style}</head><body>{view.to_html()}</body></html>",
          out / "01-attention-L1H2.png", (560, 380))
    print("\n".join(str(p) for p in sorted(out.glob("01-*.png"))))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/tutorials/figures"))
