"""Figures for notebooks, offline: a layer x head heatmap (plotly) and an attention view (inline SVG).

The heatmap follows the report's conventions (:mod:`headmine.report.meaning`): colour is the
sign-aligned importance (positive = the head supports the behaviour), a map with values of both signs
uses a diverging scale centred on zero, the colour bar states the data's own min and max, and the hover
says what the value means and the head's rank. The attention view is one self-contained HTML block
(inline SVG, no script, no CDN): the whole query x key pattern, and the keys the chosen query attends
to most. Every token string is HTML-escaped.
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from headmine.report.meaning import Meaning, importance
from headmine.report.series import ranks


def heatmap(matrix: np.ndarray, meaning: Meaning, *, title: str) -> go.Figure:
    """[layers, heads] ``matrix`` as a plotly heatmap of sign-aligned importance with the report's scale."""
    values = np.asarray(matrix, dtype=float)
    imp = np.asarray(importance(values, meaning.sign), dtype=float)
    finite = imp[np.isfinite(imp)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    rank, pct, n = ranks(values, meaning.sign, meaning.by_abs)
    hover = [[_hover(layer, head, values[layer, head], meaning, int(rank[layer, head]), pct[layer, head], n)
              for head in range(values.shape[1])] for layer in range(values.shape[0])]
    if lo < 0 < hi or (lo < 0 and hi <= 0):
        lim = max(abs(lo), abs(hi)) or 1.0
        scale: dict[str, Any] = {"colorscale": "RdBu", "zmid": 0.0, "zmin": -lim, "zmax": lim}
    else:
        scale = {"colorscale": "Blues", "zmin": 0.0, "zmax": hi or 1.0}
    unit = f" ({meaning.unit})" if meaning.unit else ""
    fig = go.Figure(go.Heatmap(
        z=imp, x=[f"H{h}" for h in range(values.shape[1])], y=[f"L{layer}" for layer in range(values.shape[0])],
        text=hover, hoverinfo="text", xgap=1, ygap=1, **scale,
        colorbar={"title": {"text": f"importance{unit}<br>data min {lo:.3g}, max {hi:.3g}", "side": "right"},
                  "ticks": "outside"},
    ))
    width = max(520, 34 * values.shape[1] + 260)
    lines = textwrap.wrap(f"{meaning.quantity}: {meaning.importance}", width=max(40, width // 7))
    subtitle = "<br>".join(f"<sup>{html.escape(line)}</sup>" for line in lines)
    fig.update_layout(
        title={"text": f"{html.escape(title)}<br>{subtitle}"}, margin={"t": 60 + 16 * len(lines)},
        xaxis_title="head", yaxis_title="layer", yaxis={"autorange": "reversed"},
        width=width, height=max(380, 20 * values.shape[0] + 170) + 16 * len(lines),
    )
    return fig


def _hover(layer: int, head: int, v: float, meaning: Meaning, rank: int, pct: float, n: int) -> str:
    if not np.isfinite(v):
        return f"L{layer}H{head}: not measured"
    where = f"rank {rank} of {n}" + (" by |value|" if meaning.by_abs else "") + f" · {pct:.0f}th percentile"
    return f"L{layer}H{head}: {v:.4g}<br>{html.escape(meaning.describe(v))}<br>{where}"


@dataclass
class AttentionView:
    """One head's attention pattern on one text: ``pattern`` [query, key] and the ``tokens``. Shown in a
    notebook as inline SVG (``_repr_html_``); :meth:`to_html` is the same block as a string."""

    head: str
    tokens: list[str]
    pattern: np.ndarray
    query: int

    def top_keys(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` keys the chosen query attends to most: (position, token, weight)."""
        row = self.pattern[self.query]
        order = np.argsort(-row, kind="stable")[:k]
        return [(int(i), self.tokens[int(i)], float(row[int(i)])) for i in order]

    def to_html(self, cell: int = 18) -> str:
        n = len(self.tokens)
        label_w = 9 * min(16, max((len(t) for t in self.tokens), default=1)) + 12
        size = label_w + cell * n + 10
        esc = [html.escape(_visible(t)[:16]) for t in self.tokens]
        rects = []
        for q in range(n):
            for k in range(q + 1):
                w = float(self.pattern[q, k])
                stroke = " stroke='#d62728' stroke-width='2'" if q == self.query else ""
                rects.append(f"<rect x='{label_w + k * cell}' y='{label_w + q * cell}' width='{cell - 1}' height='{cell - 1}' "
                             f"fill='rgba(31,119,180,{w:.3f})'{stroke}><title>query {q} {esc[q]} → key {k} {esc[k]}: "
                             f"{w:.3f}</title></rect>")
        rows = "".join(f"<text x='{label_w - 4}' y='{label_w + q * cell + cell * 0.7}' text-anchor='end'>{t}</text>"
                       for q, t in enumerate(esc))
        cols = "".join(f"<text transform='translate({label_w + k * cell + cell * 0.7},{label_w - 4}) rotate(-60)'>{t}</text>"
                       for k, t in enumerate(esc))
        top = ", ".join(f"{html.escape(_visible(t))} (position {p}) {w:.2f}" for p, t, w in self.top_keys(3))
        return (f"<div class='headmine-attention'><b>{html.escape(self.head)}</b>: query {self.query} "
                f"<code>{esc[self.query]}</code> attends most to {top}<br>"
                f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' font-family='monospace' "
                f"font-size='11' role='img' aria-label='attention pattern of {html.escape(self.head)}'>"
                f"{rows}{cols}{''.join(rects)}</svg><br><small>rows: queries, columns: keys; darker = more "
                f"attention; the red row is the chosen query</small></div>")

    def _repr_html_(self) -> str:
        return self.to_html()


def _visible(token: str) -> str:
    """A token as text a reader can see (spaces and newlines made visible)."""
    return token.replace(" ", "␣").replace("\n", "⏎") or "∅"
