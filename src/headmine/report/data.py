"""Read an atlas into the plain data the report pages show. No torch, no HTML here.

Everything is generic over ``(kind, task, method, metric)``: any head-level score series a new
method writes becomes a heatmap, enters the agreement table and shows on the head pages. A few
artifacts get specific views when present (see ``ARTIFACT_CONVENTIONS``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headmine.atlas import Atlas, load_head_types, load_papers
from headmine.core.errors import AtlasError

ARTIFACT_CONVENTIONS = """
attn_examples (JSON, on a scan run; optional on any run):
    {"examples": [{"name": "repeated_tokens", "text": "...", "tokens": ["<s>", " A", ...]}, ...],
     "patterns": {"L1H2": [[[w_q0k0, ...], [w_q1k0, w_q1k1, ...], ...], null, ...], ...}}
    patterns[head][e] is example e's attention matrix [n_q][n_k] for that head (rows = query
    positions, each row the weights over key positions; lower-triangular rows may be cut at the
    diagonal), or null when not stored. Keep it small: a few short prompts (<= 48 tokens) and the
    heads worth showing (e.g. the top 3 of each detector). Build it with make_attn_examples().
causal (JSON, scan): {detector: {detector, metric, heads, k, clean, topk_effect, random_effects,
    random_mean, random_std, confirmed, expected_sign}}  -> the causal confirmation table.
curve/<stage>/<name> or curve/<name> (npy, 1-D [steps] or 2-D [steps, seeds]) -> line charts.
targeted_ablation (JSON, chg): {"ks": [k...], "<ranking>": [delta per k], ...} -> a line chart.
Any other JSON artifact is shown (pretty-printed, size-capped) under the run's provenance.
"""

PRIMARY_METRICS = ("score", "effect", "delta_", "dla_", "F", "removed", "G", "frac_", "value")
"""The metric that stands for a (kind, task, method) in the agreement table, first found wins
(a name ending in ``_`` matches as a prefix: ``delta_logit_diff``). Per-position metrics
(``...@pos3``) never stand for a method and are folded away on the page."""

STAGE_CODES = {
    "Knowledge Recalling": "KR",
    "In-Context Identification": "ICI",
    "Latent Reasoning": "LR",
    "Expression Preparation": "EP",
}

MAX_JSON_ARTIFACT_CHARS = 20_000
MAX_CURVE_POINTS = 240
MAX_OTHER_ROWS = 400
MAX_ATTN_TOKENS = 96


def head_id(layer: int, head: int) -> str:
    return f"L{int(layer)}H{int(head)}"


_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")


def finite(x: Any, digits: int = 4) -> float | None:
    """A JSON-safe rounded float (None for NaN/inf/None)."""
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


def _plain(obj: Any, depth: int = 0) -> Any:
    """JSON-safe copy (NaN -> None, numpy -> Python)."""
    if depth > 50:
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist(), depth + 1)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite(obj, 6)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


@dataclass
class Series:
    """One head-level score map: the newest run's values of (kind, task, method, metric)."""

    key: str
    kind: str
    task: str | None
    method: str
    metric: str
    run_id: int
    values: np.ndarray  # [n_layers, n_heads], NaN = missing
    stderr: np.ndarray | None = None
    n: int | None = None

    @property
    def label(self) -> str:
        task = f" [{self.task}]" if self.task and self.kind != "scan" else ""
        return f"{self.method} · {self.metric}{task}"

    @property
    def per_position(self) -> bool:
        return is_per_position(self.metric)

    @property
    def group(self) -> tuple[str, str | None, str]:
        return (self.kind, self.task, self.method)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "kind": self.kind,
            "task": self.task,
            "method": self.method,
            "metric": self.metric,
            "label": self.label,
            "run": self.run_id,
            "n": self.n,
            "z": [[finite(v) for v in row] for row in self.values],
        }
        if self.stderr is not None and np.isfinite(self.stderr).any():
            out["se"] = [[finite(v, 3) for v in row] for row in self.stderr]
        return out


@dataclass
class ModelData:
    """Everything one model's page shows."""

    model: str
    n_layers: int
    n_heads: int
    geometry: dict[str, Any]
    runs: list[dict[str, Any]]
    series: list[Series]
    primary: list[str]
    agreement: dict[str, Any]
    labels: dict[str, list[dict[str, Any]]]
    roles: dict[str, dict[str, Any]]
    head_types: list[dict[str, Any]]
    causal_checks: list[dict[str, Any]]
    other_scores: list[dict[str, Any]]
    other_total: int
    curves: list[dict[str, Any]]
    attn: dict[str, Any]
    papers_by_type: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)

    def page_json(self) -> dict[str, Any]:
        """What the page's script reads (every string in it is data, never markup)."""
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "series": [s.to_json() for s in self.series],
            "labels": self.labels,
            "roles": self.roles,
            "curves": self.curves,
            "attn": self.attn,
            "papers": self.papers_by_type,
            "agreement": self.agreement,
        }


# --------------------------------------------------------------------------- opening
def open_atlas(path: Any) -> Atlas:
    """Open an atlas read-only, turning a missing/foreign/empty file into a clear AtlasError."""
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise AtlasError(f"no atlas at {p}", "check the --atlas path; `headmine mine` or `headmine scan --atlas FILE` writes one")
    atlas = Atlas.open(p, readonly=True)
    if not atlas.models():
        atlas.close()
        raise AtlasError(
            f"the atlas {atlas.path} holds no runs yet, so there is nothing to report",
            "run `headmine mine` (or a scan/causal command) with this atlas first",
        )
    return atlas


def require_model(atlas: Atlas, model: str) -> None:
    models = atlas.models()
    if model not in models:
        shown = ", ".join(models[:10]) + (" ..." if len(models) > 10 else "")
        raise AtlasError(
            f"the atlas {atlas.path} has no runs for model {model!r}",
            f"models with runs: {shown}" if models else "run `headmine mine MODEL` first",
        )


# --------------------------------------------------------------------------- catalog
def _papers_by_type() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in load_papers():
        entry = {
            "title": p.title,
            "date": p.date,
            "venue": p.venue,
            "url": f"https://arxiv.org/abs/{p.arxiv_id}" if p.arxiv_id else None,
            "summary": p.summary or p.key_result,
        }
        for name in p.head_types:
            out.setdefault(name, []).append(entry)
    return out


# --------------------------------------------------------------------------- runs
def _run_rows(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for r in runs.itertuples(index=False):
        run_id = int(r.id)
        info = dict(r.model_info or {})
        names = atlas.artifact_names(run_id)
        arts = []
        for name in names:
            if name.startswith("curve/") or name == "attn_examples":
                continue
            try:
                value = atlas.artifact(run_id, name)
            except AtlasError:
                continue
            if isinstance(value, np.ndarray):
                arts.append({"name": name, "text": f"array {value.dtype} {list(value.shape)}"})
            else:
                text = json.dumps(_plain(value), indent=1, ensure_ascii=False)
                if len(text) > MAX_JSON_ARTIFACT_CHARS:
                    text = text[:MAX_JSON_ARTIFACT_CHARS] + "\n... (cut)"
                arts.append({"name": name, "text": text})
        inputs = atlas.inputs(run_id)
        roles: dict[str, int] = {}
        examples = []
        for row in inputs:
            roles[row.role] = roles.get(row.role, 0) + 1
            if roles[row.role] <= 2 and len(examples) < 8:
                ids = list(row.token_ids)
                examples.append(
                    {
                        "role": row.role,
                        "idx": row.idx,
                        "text": row.text,
                        "ids": " ".join(map(str, ids[:24])) + (" ..." if len(ids) > 24 else ""),
                        "n_tokens": len(ids),
                    }
                )
        out.append(
            {
                "id": run_id,
                "kind": r.kind,
                "task": r.task,
                "status": r.status,
                "group_id": r.group_id,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "duration_s": finite(r.duration_s, 3),
                "notes": r.notes,
                "model_info": json.dumps(_plain(info), indent=1, ensure_ascii=False, sort_keys=True),
                "source": str(info.get("source", "")),
                "file_hash": str(info.get("file_hash") or ""),
                "dtype": str(info.get("dtype", "")),
                "attn": str(info.get("attn_implementation", "")),
                "params": json.dumps(_plain(r.params), indent=1, ensure_ascii=False, sort_keys=True),
                "seeds": json.dumps(_plain(r.seeds), ensure_ascii=False),
                "versions": ", ".join(f"{k} {v}" for k, v in sorted(dict(r.versions or {}).items())),
                "artifacts": arts,
                "input_roles": roles,
                "input_examples": examples,
            }
        )
    return out


def _geometry(runs: pd.DataFrame, head_scores: pd.DataFrame, labels: pd.DataFrame) -> tuple[int, int, dict[str, Any]]:
    geo: dict[str, Any] = {}
    for info in reversed(list(runs["model_info"])):
        g = (info or {}).get("geometry")
        if isinstance(g, Mapping) and "n_layers" in g and "n_heads" in g:
            geo = dict(g)
            break
    n_l = int(geo.get("n_layers", 0) or 0)
    n_h = int(geo.get("n_heads", 0) or 0)
    for df in (head_scores, labels):
        if len(df):
            n_l = max(n_l, int(df["layer"].max()) + 1)
            n_h = max(n_h, int(df["head"].max()) + 1)
    return n_l, n_h, geo


def _series_from(head_scores: pd.DataFrame, n_l: int, n_h: int, *, by_run: bool = False) -> list[Series]:
    """One Series per (kind, task, method, metric), from the newest run that has it."""
    if head_scores.empty:
        return []
    df = head_scores.copy()
    df["task"] = df["task"].astype(object).where(df["task"].notna(), None)
    keys = ["kind", "task", "method", "metric"]
    out: list[Series] = []
    for (kind, task, method, metric), grp in df.groupby(keys, sort=False, dropna=False):
        run_id = int(grp["run_id"].max())
        grp = grp[grp["run_id"] == run_id]
        vals = np.full((n_l, n_h), np.nan)
        se = np.full((n_l, n_h), np.nan)
        layers, heads = grp["layer"].to_numpy(int), grp["head"].to_numpy(int)
        ok = (layers >= 0) & (layers < n_l) & (heads >= 0) & (heads < n_h)
        vals[layers[ok], heads[ok]] = grp["value"].to_numpy(float)[ok]
        se[layers[ok], heads[ok]] = grp["stderr"].to_numpy(float)[ok]
        ns = grp["n"].dropna()
        out.append(
            Series(
                key="",
                kind=str(kind),
                task=None if task is None or (isinstance(task, float) and math.isnan(task)) else str(task),
                method=str(method),
                metric=str(metric),
                run_id=run_id,
                values=vals,
                stderr=se if np.isfinite(se).any() else None,
                n=int(ns.max()) if len(ns) else None,
            )
        )
    out.sort(key=lambda s: (_kind_order(s.kind), s.kind, s.task or "", s.method, _metric_order(s.metric), s.metric))
    for i, s in enumerate(out):
        s.key = f"s{i}"
    return out


_KIND_ORDER = ("scan", "causal_check", "ablation", "patching", "path_patching", "attribution", "dla",
               "logit_lens", "chg", "chg_contrast", "factual")


def _kind_order(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def is_per_position(metric: str) -> bool:
    return "@pos" in metric


def _metric_order(metric: str) -> int:
    if is_per_position(metric):
        return len(PRIMARY_METRICS) + 1
    for i, p in enumerate(PRIMARY_METRICS):
        if metric == p or (p.endswith("_") and metric.startswith(p)):
            return i
    return len(PRIMARY_METRICS)


def primary_series(series: list[Series]) -> list[Series]:
    """One series per (kind, task, method): its primary metric (``PRIMARY_METRICS`` order)."""
    best: dict[tuple[str, str | None, str], Series] = {}
    for s in series:
        if is_per_position(s.metric):
            continue
        cur = best.get(s.group)
        if cur is None or _metric_order(s.metric) < _metric_order(cur.metric):
            best[s.group] = s
    return [s for s in series if best.get(s.group) is s]


def rank_agreement(series: list[Series], *, min_heads: int = 5) -> dict[str, Any]:
    """Spearman rank correlation over heads between every pair of series (NaN where < min_heads)."""
    if not series:
        return {"keys": [], "labels": [], "rho": [], "n": []}
    frame = pd.DataFrame({s.key: s.values.ravel() for s in series})
    ranks = frame.rank()
    k = len(series)
    rho = np.full((k, k), np.nan)
    n = np.zeros((k, k), dtype=int)
    for i in range(k):
        for j in range(i, k):
            both = ranks.iloc[:, [i, j]].dropna()
            n[i, j] = n[j, i] = len(both)
            if len(both) < min_heads:
                continue
            a, b = both.iloc[:, 0].rank(), both.iloc[:, 1].rank()
            if a.std() == 0 or b.std() == 0:
                continue
            rho[i, j] = rho[j, i] = float(np.corrcoef(a, b)[0, 1])
    return {
        "keys": [s.key for s in series],
        "labels": [s.label for s in series],
        "kinds": [s.kind for s in series],
        "rho": [[finite(v, 3) for v in row] for row in rho],
        "n": n.tolist(),
    }


# --------------------------------------------------------------------------- labels
def _strength(value: float, threshold: float | None) -> float:
    if value is None or not math.isfinite(value):
        return float("-inf")
    if threshold is not None and math.isfinite(threshold) and threshold > 0:
        return value / threshold
    return value


def _labels(labels: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Labels of the newest run per (kind, task, method), per head, strongest first."""
    if labels.empty:
        return {}
    df = labels.copy()
    df["task"] = df["task"].astype(object).where(df["task"].notna(), "")
    newest = df.groupby(["kind", "task", "method"])["run_id"].transform("max")
    df = df[df["run_id"] == newest]
    types = load_head_types()
    out: dict[str, list[dict[str, Any]]] = {}
    for r in df.itertuples(index=False):
        name = str(r.head_type)
        stage = r.stage if isinstance(r.stage, str) else None
        if stage is None and name in types:
            stage = types[name].stage
        thr = None if r.threshold is None or (isinstance(r.threshold, float) and math.isnan(r.threshold)) else float(r.threshold)
        value = float(r.value) if r.value is not None else float("nan")
        out.setdefault(head_id(r.layer, r.head), []).append(
            {
                "head_type": name,
                "canonical": name in types,
                "stage": stage,
                "stage_code": STAGE_CODES.get(stage or "", ""),
                "method": str(r.method),
                "kind": str(r.kind),
                "value": finite(value),
                "threshold": finite(thr),
                "strength": finite(_strength(value, thr)),
                "note": r.note if isinstance(r.note, str) else None,
                "run": int(r.run_id),
            }
        )
    for items in out.values():
        items.sort(key=lambda d: (not d["canonical"], -(d["strength"] if d["strength"] is not None else -1e300)))
    return out


def _roles(labels: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    roles = {}
    for hid, items in labels.items():
        top = items[0]
        name = top["head_type"]
        short = name[:-5] if name.endswith(" Head") else name
        roles[hid] = {
            "head_type": name,
            "short": short if len(short) <= 14 else short[:13] + "…",
            "stage": top["stage"],
            "stage_code": top["stage_code"],
            "others": [d["head_type"] for d in items[1:4]],
        }
    return roles


def _head_type_sections(series: list[Series], labels: dict[str, list[dict[str, Any]]],
                        papers: dict[str, list[dict[str, Any]]], top_k: int = 5) -> list[dict[str, Any]]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for hid, items in labels.items():
        for d in items:
            by_type.setdefault(d["head_type"], []).append({**d, "head": hid})
    methods: dict[str, Series] = {}
    for s in primary_series(series):
        methods.setdefault(s.method, s)
    out = []
    types = load_head_types()
    for name, ht in types.items():
        labelled = sorted(by_type.get(name, []), key=lambda d: -(d["strength"] or 0))
        detector_tops = []
        for link in ht.detectors:
            s = methods.get(link.detector)
            if s is None:
                continue
            flat = [(v, layer, head) for (layer, head), v in np.ndenumerate(s.values) if np.isfinite(v)]
            flat.sort(reverse=True)
            detector_tops.append(
                {"method": s.method, "metric": s.metric,
                 "heads": [{"head": head_id(layer, head), "value": finite(v)} for v, layer, head in flat[:top_k]]}
            )
        if not labelled and not detector_tops:
            continue
        seen: set[str] = set()
        top_labelled = []
        for d in labelled:
            if d["head"] not in seen:
                seen.add(d["head"])
                top_labelled.append(d)
        out.append(
            {
                "name": name,
                "stage": ht.stage,
                "stage_code": STAGE_CODES.get(ht.stage, ""),
                "function": ht.function,
                "detectors": sorted({d.detector for d in ht.detectors}),
                "labelled": top_labelled[:top_k],
                "n_labelled": len(seen),
                "detector_tops": detector_tops,
                "papers": papers.get(name, []),
            }
        )
    extra = sorted(set(by_type) - set(types))
    for name in extra:
        labelled = sorted(by_type[name], key=lambda d: -(d["strength"] or 0))
        out.append({"name": name, "stage": labelled[0]["stage"], "stage_code": labelled[0]["stage_code"],
                    "function": f"label written by {', '.join(sorted({d['method'] for d in labelled}))}",
                    "detectors": [], "labelled": labelled[:top_k], "n_labelled": len(labelled),
                    "detector_tops": [], "papers": []})
    return out


# --------------------------------------------------------------------------- artifacts
def _causal_checks(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for run_id in sorted(runs["id"], reverse=True):
        if "causal" not in atlas.artifact_names(int(run_id)):
            continue
        value = atlas.artifact(int(run_id), "causal")
        if not isinstance(value, Mapping):
            continue
        for name, chk in value.items():
            if not isinstance(chk, Mapping):
                continue
            heads = chk.get("heads") or []
            out.append({
                "run": int(run_id),
                "detector": str(chk.get("detector", name)),
                "metric": str(chk.get("metric", "")),
                "heads": [str(h) for h in heads] if isinstance(heads, list) else [str(heads)],
                "k": chk.get("k"),
                "clean": finite(chk.get("clean")),
                "topk_effect": finite(chk.get("topk_effect")),
                "random_mean": finite(chk.get("random_mean")),
                "random_std": finite(chk.get("random_std")),
                "confirmed": chk.get("confirmed"),
            })
        break  # the newest run with a causal artifact
    return out


def _downsample(arr: np.ndarray) -> list[list[float | None]]:
    arr = np.asarray(arr, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[0] > MAX_CURVE_POINTS:
        idx = np.unique(np.linspace(0, arr.shape[0] - 1, MAX_CURVE_POINTS).round().astype(int))
        x = idx
        arr = arr[idx]
    else:
        x = np.arange(arr.shape[0])
    return [[int(x[i]), *[finite(v) for v in arr[i]]] for i in range(arr.shape[0])]


def _curves(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    newest: dict[tuple[str, Any], int] = {}
    for r in runs.itertuples(index=False):
        newest[(r.kind, r.task)] = int(r.id)
    for run_id in sorted(newest.values()):
        kind = runs.loc[runs["id"] == run_id, "kind"].iloc[0]
        for name in atlas.artifact_names(run_id):
            if name.startswith("curve/"):
                arr = atlas.artifact(run_id, name)
                if isinstance(arr, np.ndarray) and arr.ndim in (1, 2) and arr.size and np.issubdtype(arr.dtype, np.number):
                    out.append({"run": run_id, "kind": str(kind), "name": name[len("curve/"):],
                                "x": "update", "points": _downsample(arr)})
            elif name == "targeted_ablation":
                val = atlas.artifact(run_id, name)
                if isinstance(val, Mapping) and isinstance(val.get("ks"), list):
                    ks = val["ks"]
                    names = [k for k, v in val.items() if k != "ks" and isinstance(v, list) and len(v) == len(ks)]
                    if names:
                        pts = [[ks[i], *[finite(val[n][i]) for n in names]] for i in range(len(ks))]
                        out.append({"run": run_id, "kind": str(kind), "name": "targeted ablation",
                                    "x": "k heads", "legend": names, "points": pts})
    return out


def _layer_profiles(scores: pd.DataFrame) -> list[dict[str, Any]]:
    """Per-layer line charts for non-head components (mlp / layer / embed rows with >= 2 layers)."""
    df = scores[scores["component"].isin(["mlp", "layer", "embed"])]
    out: list[dict[str, Any]] = []
    for (kind, method, metric, comp), grp in df.groupby(["kind", "method", "metric", "component"], sort=False):
        grp = grp[grp["run_id"] == grp["run_id"].max()]
        per_layer = grp.groupby("layer")["value"].mean().sort_index()
        if len(per_layer) < 2:
            continue
        out.append({"run": int(grp["run_id"].iloc[0]), "kind": str(kind), "name": f"{method} · {metric} ({comp})",
                    "x": "layer", "points": [[int(layer), finite(v)] for layer, v in per_layer.items()]})
    return out


def parse_attn_examples(value: Any, n_layers: int, n_heads: int) -> tuple[dict[str, Any], list[str]]:
    """Validate an ``attn_examples`` artifact; return the page's attention data and warnings."""
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
    return {"examples": examples, "patterns": patterns}, notes


def make_attn_examples(
    examples: list[Mapping[str, Any]], patterns: Mapping[str, list[Any]], *, digits: int = 3
) -> dict[str, Any]:
    """Build an ``attn_examples`` artifact (see ``ARTIFACT_CONVENTIONS``) from plain data.

    ``examples``: ``[{"name": str, "text": str | None, "tokens": [str, ...]}, ...]``;
    ``patterns``: ``{"L1H2": [matrix_or_None per example]}`` with each matrix an [n_q, n_k] array-like
    (numpy or nested lists; convert torch tensors with ``.numpy()`` first). Values are rounded to
    ``digits`` decimals so the artifact stays small; rows are cut at the causal diagonal.
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
    return {"examples": out_ex, "patterns": out_pat}


def _attn(atlas: Atlas, runs: pd.DataFrame, n_l: int, n_h: int) -> tuple[dict[str, Any], list[str]]:
    for run_id in sorted(runs["id"], reverse=True):
        if "attn_examples" in atlas.artifact_names(int(run_id)):
            data, notes = parse_attn_examples(atlas.artifact(int(run_id), "attn_examples"), n_l, n_h)
            if data:
                data["run"] = int(run_id)
            return data, notes
    return {}, []


def _other_scores(scores: pd.DataFrame) -> tuple[list[dict[str, Any]], int]:
    df = scores[scores["component"] != "head"]
    rows = []
    for r in df.head(MAX_OTHER_ROWS).itertuples(index=False):
        rows.append({"run": int(r.run_id), "kind": r.kind, "method": r.method, "metric": r.metric,
                     "component": r.component, "layer": int(r.layer), "head": int(r.head),
                     "value": finite(r.value), "n": None if r.n is pd.NA else int(r.n),
                     "stderr": finite(r.stderr)})
    return rows, len(df)


# --------------------------------------------------------------------------- main entry
def load_model_data(atlas: Atlas, model: str, *, run_ids: Iterable[int] | None = None) -> ModelData:
    """Collect one model's page data (all its runs, or only ``run_ids``)."""
    require_model(atlas, model)
    runs = atlas.runs(model=model)
    scores = atlas.scores(model=model)
    labels = atlas.labels(model=model)
    if run_ids is not None:
        keep = {int(r) for r in run_ids}
        runs = runs[runs["id"].isin(keep)]
        scores = scores[scores["run_id"].isin(keep)]
        labels = labels[labels["run_id"].isin(keep)]
    head_scores = scores[scores["component"] == "head"]
    n_l, n_h, geo = _geometry(runs, head_scores, labels)
    series = _series_from(head_scores, n_l, n_h)
    prim = primary_series(series)
    label_map = _labels(labels)
    papers = _papers_by_type()
    other, other_total = _other_scores(scores)
    attn, notes = _attn(atlas, runs, n_l, n_h)
    if not series:
        notes.append("no head-level scores in this model's runs yet: heatmaps and the agreement table are empty")
    sections = _head_type_sections(series, label_map, papers)
    shown = {d["head_type"] for items in label_map.values() for d in items} | {t["name"] for t in sections}
    return ModelData(
        model=model,
        n_layers=n_l,
        n_heads=n_h,
        geometry=geo,
        runs=_run_rows(atlas, runs),
        series=series,
        primary=[s.key for s in prim],
        agreement=rank_agreement(prim),
        labels=label_map,
        roles=_roles(label_map),
        head_types=sections,
        causal_checks=_causal_checks(atlas, runs),
        other_scores=other,
        other_total=other_total,
        curves=_curves(atlas, runs) + _layer_profiles(scores),
        attn=attn,
        papers_by_type={k: v for k, v in papers.items() if k in shown},
        notes=notes,
    )
