"""A standalone layer x head heatmap as one self-contained HTML file (plotly inlined, no CDN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_heatmap_html(matrix: Any, path: str | Path, *, title: str, colorbar: str = "effect") -> Path:
    """Write ``matrix`` [layer, head] as an interactive heatmap (diverging colours centred on 0)."""
    import plotly.graph_objects as go

    arr = np.asarray(matrix, dtype=float)
    lim = float(np.nanmax(np.abs(arr))) if np.isfinite(arr).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=arr, x=[f"H{h}" for h in range(arr.shape[1])], y=[f"L{layer}" for layer in range(arr.shape[0])],
        colorscale="RdBu", zmid=0.0, zmin=-lim, zmax=lim, colorbar={"title": colorbar},
        hovertemplate="L%{y} %{x}: %{z:.4f}<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", yaxis={"autorange": "reversed"},
                      width=max(500, 40 * arr.shape[1] + 200), height=max(400, 22 * arr.shape[0] + 150))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(p), include_plotlyjs=True, full_html=True)
    return p
