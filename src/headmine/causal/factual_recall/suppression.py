"""Final-layer anti-overconfidence: what the last layer's heads and MLP do to the answer.

Measurements (METHODS.md §2.5; the paper's exact procedure is unverified, these are our choices):
- ``first_token_attention[h]``: mean attention from the prediction position to position 0 for each
  head of the final layer (position 0 is BOS when the tokenizer adds one, else the first word).
- Per component (each final-layer head, the final-layer attention as a whole, the final MLP) at the
  prediction position, using what it writes into the residual stream (:mod:`common`):
  ``answer_dlogp`` = log p(answer) of the final logits minus log p(answer) with the component's
  direct contribution removed (final norm's scale frozen: a linearised direct effect; negative = the
  component suppresses the answer); ``answer_dla`` = its centred direct logit on the answer
  (answer logit minus the vocabulary mean, divided by the final norm's scale).
- ``frequency_corr``: Spearman correlation over the vocabulary between the component's mean decoded
  direction and a token-frequency proxy (:func:`token_frequency`). Positive = the component pushes
  the distribution toward frequent, generic tokens, the signature of an anti-overconfidence term.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.factual_recall.common import (
    check_fact_batch,
    decode_direction,
    final_scale,
    sub_batches,
    written_attn,
    written_heads,
    written_mlp,
)
from headmine.causal.logit_lens import lens_logits
from headmine.core.errors import InputError
from headmine.core.ids import Site
from headmine.models.loading import LoadedModel
from headmine.tasks.base import TokenBatch


def token_frequency(tokenizer, kind: str = "merge_rank", corpus_text: str | None = None) -> np.ndarray:
    """A per-token frequency proxy [vocab] (higher = more frequent).

    ``merge_rank``: for BPE tokenizers, ``-log(2 + r)`` where r is the rank of the merge that creates
    the token (earlier merges join more frequent pairs); base symbols get 0, tokens no merge creates
    (special/added tokens) the minimum. ``corpus``: ``log(1 + count)`` over ``corpus_text``.
    """
    vocab_size = len(tokenizer)
    if kind == "corpus":
        if not corpus_text:
            raise InputError("the corpus frequency proxy needs corpus text", "pass corpus_text or use kind='merge_rank'")
        counts = Counter(tokenizer(corpus_text, add_special_tokens=False)["input_ids"])
        out = np.zeros(vocab_size)
        for t, c in counts.items():
            if t < vocab_size:
                out[t] = math.log1p(c)
        return out
    if kind != "merge_rank":
        raise InputError(f"unknown frequency proxy {kind!r}", "use 'merge_rank' or 'corpus'")
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise InputError(f"merge ranks need a BPE tokenizer, this one is {model.get('type')}", "use kind='corpus'")
    vocab: dict[str, int] = model["vocab"]
    merges = model.get("merges", [])
    floor = -math.log(2 + len(merges))
    out = np.full(vocab_size, floor)
    for tok, i in vocab.items():
        if len(tok) == 1 and i < vocab_size:
            out[i] = 0.0
    for r, pair in enumerate(merges):
        a, b = pair if isinstance(pair, (list, tuple)) else pair.split(" ", 1)
        merged = vocab.get(a + b)
        if merged is not None and merged < vocab_size and out[merged] == floor:
            out[merged] = -math.log(2 + r)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


@dataclass(frozen=True)
class Component:
    name: str                 # "L17H2", "attn17", "mlp17"
    answer_dlogp: float
    answer_dla: float
    frequency_corr: float
    top_tokens: list[int]     # 10 token ids the mean direction promotes most
    bottom_tokens: list[int]  # 10 it demotes most
    first_token_attention: float = float("nan")


@dataclass(frozen=True)
class Suppression:
    layer: int
    first_token_attention: list[float]
    components: list[Component]
    n: int

    def suppressors(self) -> list[str]:
        """Names of components whose direct effect lowers log p(answer), most suppressive first."""
        return [c.name for c in sorted(self.components, key=lambda c: c.answer_dlogp) if c.answer_dlogp < 0]

    def table(self) -> list[dict[str, object]]:
        return [{"component": c.name, "answer_dlogp": c.answer_dlogp, "answer_dla": c.answer_dla,
                 "frequency_corr": c.frequency_corr, "first_token_attention": c.first_token_attention}
                for c in self.components]


def final_layer_suppression(
    lm: LoadedModel, batch: TokenBatch, *, frequency: np.ndarray, layer: int | None = None, batch_size: int = 8
) -> Suppression:
    """Measure the final layer's (or ``layer``'s) heads and MLP at the prediction position (module docstring)."""
    check_fact_batch(batch)
    g = lm.geometry
    layer = g.n_layers - 1 if layer is None else layer
    g.check_layer(layer)
    H = g.n_heads
    names = [f"L{layer}H{h}" for h in range(H)] + [f"attn{layer}", f"mlp{layer}"]
    dlogp = torch.zeros(len(names))
    dla = torch.zeros(len(names))
    dir_sum: torch.Tensor | None = None
    first = torch.zeros(H)
    for sub in sub_batches(batch, batch_size):
        end, tgt = sub.meta["end_pos"], sub.meta["target_id"].to(lm.adapter.W_U().device)  # where logits are read
        spec = CaptureSpec(sites=frozenset({Site.PATTERN, Site.RESULT, Site.ATTN_OUT, Site.MLP_OUT, Site.RESID}),
                           layers=(layer, g.n_layers), query_positions=end, keep_logits=False)
        rec = run_capture(lm, spec, sub.input_ids, sub.attention_mask)
        with torch.no_grad():
            first += rec.pattern[layer][:, :, 0, 0].float().sum(0).cpu()
            resid = rec.resid[g.n_layers][:, 0]
            heads = written_heads(lm, layer, rec.result[layer][:, 0], rec.attn_out[layer][:, 0])  # [b, H, d]
            comps = torch.cat([heads, written_attn(lm, layer, rec.attn_out[layer][:, 0])[:, None],
                               written_mlp(lm, layer, rec.mlp_out[layer][:, 0])[:, None]], dim=1)  # [b, C, d]
            full = torch.log_softmax(lens_logits(lm, resid).float(), -1)  # [b, V]
            rows = torch.arange(len(sub), device=tgt.device)
            lp_full = full[rows, tgt]
            scale = final_scale(lm, resid)[:, None, None]
            direct = decode_direction(lm, comps).float() / scale.float()  # [b, C, V] linearised direct logits
            logits_full = lens_logits(lm, resid).float()
            for c in range(len(names)):
                without = torch.log_softmax(logits_full - direct[:, c], -1)[rows, tgt]
                dlogp[c] += (lp_full - without).sum().cpu()
            centred = direct - direct.mean(-1, keepdim=True)
            dla += centred[rows, :, tgt].sum(0).cpu()
            s = comps.float().sum(0).cpu()
            dir_sum = s if dir_sum is None else dir_sum + s
        del rec
    n = len(batch)
    assert dir_sum is not None
    with torch.no_grad():
        mean_dirs = decode_direction(lm, (dir_sum / n).to(lm.adapter.W_U().dtype).to(lm.device)).float().cpu()  # [C, V]
    freq = np.asarray(frequency, dtype=float)
    v = min(freq.shape[0], mean_dirs.shape[1])
    comps_out = []
    for c, name in enumerate(names):
        d = mean_dirs[c, :v].numpy()
        comps_out.append(Component(
            name=name, answer_dlogp=float(dlogp[c] / n), answer_dla=float(dla[c] / n),
            frequency_corr=spearman(d, freq[:v]), top_tokens=mean_dirs[c].topk(10).indices.tolist(),
            bottom_tokens=(-mean_dirs[c]).topk(10).indices.tolist(),
            first_token_attention=float(first[c] / n) if c < H else float("nan")))
    return Suppression(layer, (first / n).tolist(), comps_out, n)
