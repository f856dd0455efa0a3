"""Opening an atlas for a report, and each run's provenance box (model info, params, artifacts,
example inputs) and the model's geometry."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headmine.atlas import Atlas
from headmine.atlas.artifacts import ATTN_EXAMPLES, curve_name, finite
from headmine.core.errors import AtlasError

MAX_JSON_ARTIFACT_CHARS = 20_000
_QUANT_RE = re.compile(r"[._-](I?Q\d[A-Za-z0-9_]*|BF16|F16|F32|FP16)$", re.IGNORECASE)


def plain_json(obj: Any, depth: int = 0) -> Any:
    """JSON-safe copy (NaN -> None, numpy -> Python)."""
    if depth > 50:
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): plain_json(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain_json(obj.tolist(), depth + 1)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite(obj, 6)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)



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
    """Raise a clear AtlasError when the atlas has no run of ``model``."""
    models = atlas.models()
    if model not in models:
        shown = ", ".join(models[:10]) + (" ..." if len(models) > 10 else "")
        raise AtlasError(
            f"the atlas {atlas.path} has no runs for model {model!r}",
            f"models with runs: {shown}" if models else "run `headmine mine MODEL` first",
        )



def run_rows(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """One provenance box per run: model info, params, seeds, versions, JSON artifacts, example inputs."""
    out = []
    for r in runs.itertuples(index=False):
        run_id = int(r.id)
        info = dict(r.model_info or {})
        names = atlas.artifact_names(run_id)
        arts = []
        for name in names:
            if curve_name(name) is not None or name == ATTN_EXAMPLES:
                continue
            try:
                value = atlas.artifact(run_id, name)
            except AtlasError:
                continue
            if isinstance(value, np.ndarray):
                arts.append({"name": name, "text": f"array {value.dtype} {list(value.shape)}"})
            else:
                text = json.dumps(plain_json(value), indent=1, ensure_ascii=False)
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
                        "text": row.text,  # None: the writer stored ids only (shown as such)
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
                "model_info": json.dumps(plain_json(info), indent=1, ensure_ascii=False, sort_keys=True),
                "source": str(info.get("source", "")),
                "file_hash": str(info.get("file_hash") or ""),
                "dtype": str(info.get("dtype", "")),
                "device": device_text(info),
                "attn": str(info.get("attn_implementation", "")),
                "params": json.dumps(plain_json(r.params), indent=1, ensure_ascii=False, sort_keys=True),
                "seeds": json.dumps(plain_json(r.seeds), ensure_ascii=False),
                "versions": ", ".join(f"{k} {v}" for k, v in sorted(dict(r.versions or {}).items())),
                "artifacts": arts,
                "input_roles": roles,
                "input_examples": examples,
            }
        )
    return out


def model_geometry(runs: pd.DataFrame, head_scores: pd.DataFrame, labels: pd.DataFrame) -> tuple[int, int, dict[str, Any]]:
    """(n_layers, n_heads, geometry): the newest stored geometry, widened to every scored or labelled head."""
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



def device_text(info: Mapping[str, Any]) -> str:
    """Where a run computed: the device asked for, and for a model spread by accelerate the devices
    that held its parameters (``auto: cuda:0 52%, cuda:1 48%``)."""
    asked = str(info.get("device") or "")
    placement = info.get("placement")
    devices = placement.get("devices") if isinstance(placement, Mapping) else None
    if not isinstance(devices, Mapping) or len(devices) < 2:
        return asked
    total = sum(float(v) for v in devices.values()) or 1.0
    spread = ", ".join(f"{k} {100 * float(v) / total:.0f}%" for k, v in devices.items())
    return f"{asked}: {spread}" if asked else spread


def model_header(runs: pd.DataFrame) -> dict[str, Any]:
    """The page header's model identity from the newest run's provenance: alias, full name (a hub
    id or the weight file's stem), quantisation of the weight file, compute dtype and file hash."""
    info: dict[str, Any] = {}
    for value in reversed(list(runs["model_info"])):
        if isinstance(value, Mapping) and value:
            info = dict(value)
            break
    source = str(info.get("source") or "")
    stem = Path(source).name if source else ""
    for ext in (".gguf", ".safetensors", ".bin", ".pt"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    quant = info.get("quantization") or info.get("quantisation")
    m = _QUANT_RE.search(stem)
    if m:
        quant = quant or m.group(1).upper()
        stem = stem[: m.start()]
    full = str(info.get("full_name") or info.get("repo_id") or (source if "/" in source and not Path(source).exists()
                                                                 and not source.startswith(("/", ".")) else stem))
    return {"name": str(info.get("name") or ""), "full_name": full, "quantization": str(quant) if quant else None,
            "dtype": str(info.get("dtype") or ""), "device": device_text(info),
            "model_type": str(info.get("model_type") or ""),
            "file": Path(source).name if source else "", "file_hash": str(info.get("file_hash") or "")[:12]}
