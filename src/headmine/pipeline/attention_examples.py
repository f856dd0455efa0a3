"""Attention patterns of a scan's top heads on a few short example prompts (the report's head pages)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from headmine.atlas.artifacts import make_attn_examples
from headmine.capture import CaptureSpec, run_capture
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel

EXAMPLE_PROMPTS = (
    ("repetition", "The cat sat on the mat. The dog ran in the park. The cat sat on the mat. The dog ran"),
    ("names", "When Mary and John went to the store, John gave a drink to"),
)


def head_ids(df: pd.DataFrame) -> list[HeadId]:
    """The heads of a score table's rows, in order."""
    return [HeadId(int(r.layer), int(r.head)) for r in df.itertuples()]


def attention_examples(lm: LoadedModel, heads: list[HeadId], prompts: tuple[tuple[str, str], ...] = EXAMPLE_PROMPTS,
                       digits: int = 3) -> dict[str, Any]:
    """Attention patterns of ``heads`` on a few short example prompts, for the report's head pages: the
    ``attn_examples`` artifact of ``headmine.atlas.artifacts`` (empty when there is nothing to show;
    prompts longer than the model's context are left out)."""
    if not heads or lm.tokenizer is None:
        return {}
    examples: list[dict[str, Any]] = []
    patterns: dict[str, list[Any]] = {str(h): [] for h in heads}
    for name, text in prompts:
        enc = lm.tokenize([text])
        if enc["input_ids"].shape[1] > lm.geometry.n_ctx:
            continue
        rec = run_capture(lm, CaptureSpec(sites={Site.PATTERN}, heads=tuple(heads), keep_logits=False), **enc)
        ids = enc["input_ids"][0].tolist()
        examples.append({"name": name, "text": text, "tokens": [lm.tokenizer.decode([i]) for i in ids]})
        for h in heads:
            patterns[str(h)].append(rec.head_tensor(Site.PATTERN, h)[0].float().cpu().numpy())
    return make_attn_examples(examples, patterns, digits=digits) if examples else {}
