"""The tidy score table every detector and causal method returns (one row per component and metric).

Columns match the atlas ``scores`` table: component ("head", "mlp", "embed", "layer"), layer,
head (-1 when the component is not a head), method, metric, value, n (samples averaged), stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

SCORE_COLUMNS = ["component", "layer", "head", "method", "metric", "value", "n", "stderr"]


def scores_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a tidy score table, filling defaults (component="head", head=-1, n=1, stderr=NaN)."""
    df = pd.DataFrame(list(rows))
    defaults = {"component": "head", "head": -1, "metric": "score", "n": 1, "stderr": np.nan}
    for col in SCORE_COLUMNS:
        if col not in df:
            if col not in defaults:
                raise ValueError(f"score rows need a {col!r} field")
            df[col] = defaults[col]
    return df[SCORE_COLUMNS].astype({"layer": int, "head": int, "n": int, "value": float})


def head_matrix_frame(values: np.ndarray | Any, *, method: str, metric: str = "score", n: int = 1,
                      stderr: np.ndarray | None = None) -> pd.DataFrame:
    """Tidy table from a [layer, head] matrix (numpy or torch)."""
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=float)
    err = None if stderr is None else np.asarray(stderr.detach().cpu() if hasattr(stderr, "detach") else stderr, dtype=float)
    rows = [
        {"layer": layer, "head": head, "method": method, "metric": metric, "value": arr[layer, head], "n": n,
         "stderr": np.nan if err is None else err[layer, head]}
        for layer in range(arr.shape[0]) for head in range(arr.shape[1])
    ]
    return scores_frame(rows)
