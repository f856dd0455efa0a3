"""Attention patterns of top heads on a few short example prompts, and the tokens each head's output
promotes there (the report's head pages): the scan stores its detectors' top heads; `mine`'s last
stage (:func:`method_top_views`) stores every head that a causal method or CHG puts in its top 20."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from headmine.atlas import Atlas
from headmine.atlas.artifacts import ATTN_EXAMPLES, make_attn_examples
from headmine.atlas.job import AtlasRun
from headmine.atlas.schema import RunRecord
from headmine.capture import CaptureSpec, run_capture
from headmine.causal.logit_lens import lens_logits
from headmine.core.errors import UnsupportedModelError
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel
from headmine.report.series import method_top_heads, series_from

TOP_K = 20
"""A head in any method's top this-many gets attention examples (the report's ``TOP_FOR_ATTENTION``)."""
N_PROMOTED = 5

EXAMPLE_PROMPTS = (
    ("repetition", "The cat sat on the mat. The dog ran in the park. The cat sat on the mat. The dog ran"),
    ("names", "When Mary and John went to the store, John gave a drink to"),
)


def head_ids(df: pd.DataFrame) -> list[HeadId]:
    """The heads of a score table's rows, in order."""
    return [HeadId(int(r.layer), int(r.head)) for r in df.itertuples()]


def _promoted(lm: LoadedModel, out: torch.Tensor) -> list[str] | None:
    """The tokens a head's output vector [d_model] promotes most: the logit lens (final norm,
    unembedding) of that vector alone, top ``N_PROMOTED``; None for a model without an unembedding."""
    try:
        with torch.no_grad():
            logits = lens_logits(lm, out.reshape(1, -1)).float()[0]
    except UnsupportedModelError:
        return None
    return [lm.tokenizer.decode([int(i)]) for i in torch.topk(logits, N_PROMOTED).indices.tolist()]


def attention_examples(lm: LoadedModel, heads: list[HeadId], prompts: tuple[tuple[str, str], ...] = EXAMPLE_PROMPTS,
                       digits: int = 3) -> dict[str, Any]:
    """Attention patterns of ``heads`` on a few short example prompts, and the tokens each head's
    output at the final position promotes (logit lens of its OV output), for the report's head pages:
    the ``attn_examples`` artifact of ``headmine.atlas.artifacts`` (empty when there is nothing to
    show; prompts longer than the model's context are left out)."""
    if not heads or lm.tokenizer is None:
        return {}
    examples: list[dict[str, Any]] = []
    patterns: dict[str, list[Any]] = {str(h): [] for h in heads}
    promotes: dict[str, list[Any]] = {str(h): [] for h in heads}
    for name, text in prompts:
        enc = lm.tokenize([text])
        if enc["input_ids"].shape[1] > lm.geometry.n_ctx:
            continue
        rec = run_capture(lm, CaptureSpec(sites={Site.PATTERN, Site.RESULT}, heads=tuple(heads), keep_logits=False), **enc)
        ids = enc["input_ids"][0].tolist()
        examples.append({"name": name, "text": text, "tokens": [lm.tokenizer.decode([i]) for i in ids]})
        for h in heads:
            patterns[str(h)].append(rec.head_tensor(Site.PATTERN, h)[0].float().cpu().numpy())
            promotes[str(h)].append(_promoted(lm, rec.head_tensor(Site.RESULT, h)[0, -1]))
    if not examples:
        return {}
    return make_attn_examples(examples, patterns, digits=digits,
                              promotes=promotes if any(t is not None for v in promotes.values() for t in v) else None)


def method_top_views(lm: LoadedModel, atlas_path: str | Path, group_id: str, k: int = TOP_K) -> AtlasRun:
    """The ``attention`` run of `mine`: attention examples (and promoted tokens) of every head that a
    causal method or CHG run of session ``group_id`` puts in its top ``k`` (the heads the report's
    head pages look for). A ready :class:`AtlasRun` with no scores: it adds views, not findings."""
    start = time.perf_counter()
    with Atlas.open(atlas_path, create=False) as db:
        runs = db.runs(group_id=group_id)
        scores = db.scores(model=lm.name, component="head")
    scores = scores[scores["run_id"].isin(set(runs["id"]))]
    g = lm.geometry
    scores = scores[(scores["layer"] < g.n_layers) & (scores["head"] < g.n_heads)]
    tops = method_top_heads(series_from(scores, g.n_layers, g.n_heads), k)
    heads = sorted(HeadId(int(layer), int(head)) for layer, head in (hid[1:].split("H") for hid in tops))
    artifact = attention_examples(lm, heads)
    record = RunRecord(kind="attention", model=lm.name, model_info=lm.model_info(), group_id=group_id,
                       params={"top_k": k, "n_heads": len(heads), "from_runs": sorted({int(r) for r in scores["run_id"]}),
                               "prompts": [name for name, _ in EXAMPLE_PROMPTS]},
                       duration_s=time.perf_counter() - start,
                       notes=f"attention examples of the {len(heads)} heads in any method's top {k}")
    return AtlasRun(record=record, artifacts={ATTN_EXAMPLES: artifact} if artifact else {})
