"""Artifact codecs: the formats of the artifacts that jobs write and the report reads, in one place.

A job encodes with the ``make_*`` / ``*_artifacts`` functions; the report decodes with the
``parse_*`` functions, which validate (an artifact from an older or foreign writer never breaks a
page: it is skipped with a note). No torch here: producers pass numpy arrays or plain data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

ATTN_EXAMPLES = "attn_examples"
CAUSAL_CHECKS = "causal"
TARGETED_ABLATION = "targeted_ablation"
CURVE_PREFIX = "curve/"
CHG_SCORES = ("G", "G_plus", "G_minus", "F", "N", "I")

ARTIFACT_CONVENTIONS = """
attn_examples (JSON, on a scan run; optional on any run):
    {"examples": [{"name": "repeated_tokens", "text": "...", "tokens": ["<s>", " A", ...]}, ...],
     "patterns": {"L1H2": [[[w_q0k0, ...], [w_q1k0, w_q1k1, ...], ...], null, ...], ...}}
    patterns[head][e] is example e's attention matrix [n_q][n_k] for that head (rows = query
    positions, each row the weights over key positions; lower-triangular rows may be cut at the
    diagonal), or null when not stored. Keep it small: a few short prompts (<= 48 tokens) and the
    heads worth showing (e.g. the top 3 of each detector). Build it with make_attn_examples().
    Optional "promotes": {"L1H2": [[token, ...] or null per example]}: the tokens the head's output
    at the example's final position promotes most (logit lens of its OV output), best first.
causal (JSON, scan): {detector: {detector, metric, heads, k, clean, topk_effect, random_effects,
    random_mean, random_std, confirmed, expected_sign}}  -> the causal confirmation table.
curve/<stage>/<name> or curve/<name> (npy, 1-D [steps] or 2-D [steps, seeds]) -> line charts.
targeted_ablation (JSON, chg): {"ks": [k...], "<ranking>": [delta per k], ...} -> a line chart.
apply_summary (JSON, on an application run: steer, fv, safety, inject, kv, prune): {"kind", "title", "paper",
    "heads": ["L1H2", ...], "chosen": {param: value}, "tables": {name: [row, ...]}, "selection": [...],
    "notes": [str], "data": {name: size}}; a row is {"split", "condition", "metric", "n", "value", "ci": [lo, hi]}
    plus, when paired with the unedited model, {"delta", "delta_ci": [lo, hi], "significant"}
    -> the applications section (built by headmine.apply.ApplyResult).
Any other JSON artifact is shown (pretty-printed, size-capped) under the run's provenance.
"""

APPLY_SUMMARY = "apply_summary"
"""Artifact name of an application run's summary (see ``ARTIFACT_CONVENTIONS``)."""

MAX_ATTN_TOKENS = 96
"""Tokens (and rows/columns of each pattern) the report keeps of one attention example."""

_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")


def finite(x: Any, digits: int = 4) -> float | None:
    """A JSON-safe float rounded to ``digits`` significant digits (None for NaN/inf/None/non-numbers)."""
    if x is None or x is pd.NA:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    if v == 0:
        return 0.0
    return float(f"{v:.{digits}g}")


# --------------------------------------------------------------------------- attention examples
def make_attn_examples(
    examples: list[Mapping[str, Any]], patterns: Mapping[str, list[Any]], *, digits: int = 3,
    promotes: Mapping[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """Build an ``attn_examples`` artifact (see ``ARTIFACT_CONVENTIONS``) from plain data.

    ``examples``: ``[{"name": str, "text": str | None, "tokens": [str, ...]}, ...]``;
    ``patterns``: ``{"L1H2": [matrix_or_None per example]}`` with each matrix an [n_q, n_k] array-like
    (numpy or nested lists; convert torch tensors with ``.numpy()`` first). Values are rounded to
    ``digits`` decimals so the artifact stays small; rows are cut at the causal diagonal.
    ``promotes``: ``{"L1H2": [[token str, ...] or None per example]}`` (optional).
    """
    out_ex = [{"name": str(e.get("name", f"example {i}")), "text": None if e.get("text") is None else str(e["text"]),
               "tokens": [str(t) for t in e.get("tokens", [])]} for i, e in enumerate(examples)]
    out_pat: dict[str, list[Any]] = {}
    for hid, mats in patterns.items():
        if _HEAD_RE.match(hid) is None:
            raise ValueError(f"pattern keys are head ids like 'L1H2', got {hid!r}")
        if len(mats) != len(out_ex):
            raise ValueError(f"{hid}: {len(mats)} matrices for {len(out_ex)} examples (use None for a missing one)")
        cleaned: list[Any] = []
        for mat in mats:
            if mat is None:
                cleaned.append(None)
                continue
            arr = np.asarray(mat, dtype=float)
            if arr.ndim != 2:
                raise ValueError(f"{hid}: each pattern must be a 2-D [n_q, n_k] matrix, got shape {arr.shape}")
            cleaned.append([[round(float(w), digits) for w in row[: min(len(row), q + 1 + (arr.shape[1] - arr.shape[0]))]]
                            for q, row in enumerate(arr)])
        out_pat[hid] = cleaned
    out: dict[str, Any] = {"examples": out_ex, "patterns": out_pat}
    if promotes:
        for hid, toks in promotes.items():
            if _HEAD_RE.match(hid) is None or len(toks) != len(out_ex):
                raise ValueError(f"promotes[{hid!r}] needs a head id key and one token list (or None) per example")
        out["promotes"] = {hid: [None if t is None else [str(x) for x in t] for t in toks] for hid, toks in promotes.items()}
    return out


def _parse_promotes(raw: Any, n_examples: int) -> dict[str, list[Any]]:
    """The optional ``promotes`` part of an ``attn_examples`` artifact (malformed entries dropped)."""
    out: dict[str, list[Any]] = {}
    if not isinstance(raw, Mapping):
        return out
    for hid, lists in raw.items():
        m = _HEAD_RE.match(str(hid))
        if m is None or not isinstance(lists, list):
            continue
        out[f"L{int(m.group(1))}H{int(m.group(2))}"] = [
            [str(t) for t in toks[:20]] if isinstance(toks, list) else None for toks in lists[:n_examples]]
    return out


def parse_attn_examples(value: Any, n_layers: int, n_heads: int) -> tuple[dict[str, Any], list[str]]:
    """Validate an ``attn_examples`` artifact; return the page's attention data and warnings.

    Examples and patterns are cut to ``MAX_ATTN_TOKENS``; malformed entries are dropped with a note.
    """
    notes: list[str] = []
    if not isinstance(value, Mapping) or not isinstance(value.get("examples"), list):
        return {}, ["attn_examples artifact ignored: expected {'examples': [...], 'patterns': {...}}"]
    examples = []
    for e in value["examples"]:
        e = e if isinstance(e, Mapping) else {}
        toks = e.get("tokens") if isinstance(e.get("tokens"), list) else []
        examples.append({
            "name": str(e.get("name", f"example {len(examples)}")),
            "text": None if e.get("text") is None else str(e.get("text")),
            "tokens": [str(t) for t in toks[:MAX_ATTN_TOKENS]],
        })
    patterns: dict[str, list[Any]] = {}
    raw = value.get("patterns")
    if isinstance(raw, Mapping):
        for hid, mats in raw.items():
            m = _HEAD_RE.match(str(hid))
            if m is None or not isinstance(mats, list):
                notes.append(f"attn_examples: skipped pattern key {str(hid)[:40]!r}")
                continue
            cleaned: list[Any] = []
            for e_idx, mat in enumerate(mats[: len(examples)]):
                if mat is None:
                    cleaned.append(None)
                    continue
                try:
                    arr = [[finite(w, 3) for w in row[:MAX_ATTN_TOKENS]] for row in mat[:MAX_ATTN_TOKENS]]
                except TypeError:
                    notes.append(f"attn_examples: pattern {hid} example {e_idx} is not a matrix")
                    cleaned.append(None)
                    continue
                cleaned.append(arr)
            patterns[f"L{int(m.group(1))}H{int(m.group(2))}"] = cleaned
    return {"examples": examples, "patterns": patterns, "promotes": _parse_promotes(value.get("promotes"), len(examples))}, notes


# --------------------------------------------------------------------------- causal checks (scan)
def make_causal_checks(checks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``causal`` artifact: one entry per detector, from its check (an object with ``to_dict()``
    or a mapping with the fields listed in ``ARTIFACT_CONVENTIONS``)."""
    return {str(name): dict(chk.to_dict() if hasattr(chk, "to_dict") else chk) for name, chk in checks.items()}


_CHECK_FIELDS = ("detector", "metric", "heads", "k", "clean", "topk_effect", "random_effects", "random_mean",
                 "random_std", "confirmed", "expected_sign")


def parse_causal_checks(value: Any) -> list[dict[str, Any]]:
    """The rows of the causal confirmation table from a ``causal`` artifact (malformed entries skipped)."""
    if not isinstance(value, Mapping):
        return []
    out = []
    for name, chk in value.items():
        if not isinstance(chk, Mapping):
            continue
        heads = chk.get("heads") or []
        rand = chk.get("random_effects")
        rand = [finite(r) for r in rand if finite(r) is not None] if isinstance(rand, list) else []
        sign = chk.get("expected_sign", 1)
        out.append({
            "detector": str(chk.get("detector", name)),
            "metric": str(chk.get("metric", "")),
            "heads": [str(h) for h in heads] if isinstance(heads, list) else [str(heads)],
            "k": chk.get("k"),
            "clean": finite(chk.get("clean")),
            "topk_effect": finite(chk.get("topk_effect")),
            "random_mean": finite(chk.get("random_mean")),
            "random_std": finite(chk.get("random_std")),
            "random_effects": rand,
            "expected_sign": int(sign) if isinstance(sign, (int, float)) and math.isfinite(sign) else 1,
            "confirmed": chk.get("confirmed"),
            # fields a writer may add (a stated pass rule, a dormancy KL, ...) pass through as text/numbers
            "extra": {str(k): v for k, v in chk.items()
                      if k not in _CHECK_FIELDS and isinstance(v, (str, int, float, bool))},
        })
    return out


# --------------------------------------------------------------------------- training curves
def curve_artifacts(curves: Mapping[str, Any], prefix: str = CURVE_PREFIX) -> dict[str, np.ndarray]:
    """``curve/<stage>/<name>`` float32 arrays from ``{stage: {name: [steps(, seeds)]}}``, or
    ``curve/<name>`` from ``{name: [steps(, seeds)]}``."""
    out: dict[str, np.ndarray] = {}
    for stage, value in curves.items():
        if isinstance(value, Mapping):
            for name, arr in value.items():
                out[f"{prefix}{stage}/{name}"] = np.asarray(arr, dtype=np.float32)
        else:
            out[f"{prefix}{stage}"] = np.asarray(value, dtype=np.float32)
    return out


def curve_name(artifact_name: str) -> str | None:
    """``"G/loss"`` for the artifact ``"curve/G/loss"``; None for an artifact that is not a curve."""
    return artifact_name[len(CURVE_PREFIX):] if artifact_name.startswith(CURVE_PREFIX) else None


def parse_curve(value: Any) -> np.ndarray | None:
    """A curve artifact as a float array [steps] or [steps, seeds], or None when it is not one."""
    if isinstance(value, np.ndarray) and value.ndim in (1, 2) and value.size and np.issubdtype(value.dtype, np.number):
        return value.astype(float)
    return None


# --------------------------------------------------------------------------- targeted ablation (chg)
def make_targeted_ablation(ks: Sequence[int], deltas: Mapping[str, Sequence[float]]) -> dict[str, list[Any]]:
    """The ``targeted_ablation`` artifact: ``{"ks": [k...], ranking: [delta per k]}``."""
    return {"ks": list(ks), **{name: [float(x) for x in v] for name, v in deltas.items()}}


def parse_targeted_ablation(value: Any) -> tuple[list[Any], dict[str, list[Any]]] | None:
    """(ks, {ranking: deltas}) from a ``targeted_ablation`` artifact; None when malformed or empty."""
    if not isinstance(value, Mapping) or not isinstance(value.get("ks"), list):
        return None
    ks = value["ks"]
    series = {k: v for k, v in value.items() if k != "ks" and isinstance(v, list) and len(v) == len(ks)}
    return (ks, series) if series else None


# --------------------------------------------------------------------------- CHG arrays
def chg_artifacts(scores: Mapping[str, Any], label_codes: Any, label_names: Sequence[str]) -> dict[str, Any]:
    """The per-seed CHG arrays: each score in ``CHG_SCORES`` as float32 [K, L, H], ``labels`` as int8
    [K, L, H] indexing ``label_names``."""
    missing = [name for name in CHG_SCORES if name not in scores]
    if missing:
        raise ValueError(f"CHG artifacts need the scores {CHG_SCORES}; missing {missing}")
    out: dict[str, Any] = {name: np.asarray(scores[name]).astype(np.float32) for name in CHG_SCORES}
    out["labels"] = np.asarray(label_codes).astype(np.int8)
    out["label_names"] = list(label_names)
    return out
