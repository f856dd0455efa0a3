"""Argument-passing heads: heads whose output at the last position carries the subject there.

Three measurements per head, then a ranking and a causal check (METHODS.md §2.3; choices ours):

1. **Path patching with subject swaps** (the ranking score). Each prompt is paired with another fact
   of the same relation whose subject has as many tokens and whose answer differs (the factual task's
   corrupted prompts, or token-level splices from :func:`subject_swaps`). With
   :func:`headmine.causal.path_patching.path_patching` (``receivers="logits"``) the sender's ``z``
   comes from the corrupted run while every head of later layers is frozen to its clean ``z``; MLPs
   recompute. The sender therefore acts only through MLPs and the final readout (the path the
   paper describes: heads -> MLP -> answer). Score = ``(LD_patched - LD_clean) / (LD_corrupt -
   LD_clean)`` with ``LD = logit(answer) - logit(partner's answer)`` at the prediction position:
   the share of the swap effect carried by that path (1 = all of it).
2. **Attention to the subject**: attention mass from the prediction position to the subject span.
3. **Decoding the head output**: the head's written output at the prediction position decoded through
   the final norm gain and unembedding; ``decode_acc`` = share of prompts where the prompt's own
   subject token (last token of the span) gets the highest logit among the subjects of that relation
   (chance = 1 / number of subjects).

Cost control (our choice): with ``max_senders`` only that many heads are path-patched: half the
most promising by attribution patching (first-order estimate of each head's patching effect, one
forward + backward), the rest by attention to the subject; the others stay NaN. ``max_pairs``
subsamples the prompt pairs.

Causal check: the top-k heads patched together from the corrupted run (total effect at the
prediction position, all paths) versus k random other heads (mean over draws), with a paired
bootstrap 95% CI over prompts of the difference (top minus the random draws' mean, per prompt).
It reuses the prompts that ranked the heads; :func:`check_heads` runs the same check on other
prompts (rank on one half, check on the other: no selection bias in the check).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.attribution_patching import attribution_patching
from headmine.causal.factual_recall.common import (
    as_list,
    bootstrap_ci,
    check_fact_batch,
    decode_direction,
    rows_at,
    written_heads,
)
from headmine.causal.fast_sweep import PrefixCache, sweep_sets
from headmine.causal.metrics import AnswerMetric
from headmine.causal.path_patching import path_patching
from headmine.core.errors import TaskError
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel
from headmine.tasks.base import TokenBatch


# --------------------------------------------------------------------------- subject swaps
@dataclass(frozen=True)
class SwapPairs:
    """Clean rows, their subject-swapped counterparts (same length) and the partner answers."""

    clean: TokenBatch
    corrupted: TokenBatch
    partner_target: torch.Tensor  # [B]
    partner_row: list[int]        # row of the original batch the swapped-in subject came from


def subject_swaps(batch: TokenBatch, *, seed: int = 0) -> SwapPairs:
    """Pair every prompt with a same-relation fact whose subject has equally many tokens and a different answer.

    Rows without such a partner are dropped. The corrupted ids are the clean ids with the partner's
    subject tokens spliced into the subject span (positions and lengths unchanged).
    """
    check_fact_batch(batch)
    rng = random.Random(seed)
    span = batch.meta["subject_span"]
    target = batch.meta["target_id"]
    rel = list(batch.meta["relation"])
    ids = batch.input_ids
    keep, partner = [], []
    for i in range(len(batch)):
        s, e = int(span[i, 0]), int(span[i, 1])
        mine = ids[i, s:e].tolist()
        cands = [j for j in range(len(batch)) if j != i and rel[j] == rel[i]
                 and int(span[j, 1] - span[j, 0]) == e - s and int(target[j]) != int(target[i])
                 and ids[j, int(span[j, 0]):int(span[j, 1])].tolist() != mine]
        if cands:
            keep.append(i)
            partner.append(rng.choice(cands))
    if len(keep) < 2:
        raise TaskError(
            f"only {len(keep)} prompts have a same-relation partner with an equally long subject and another answer",
            "add facts (subjects of equal token length, different answers) to the relations",
        )
    clean = batch.select(keep)
    corrupt_ids = clean.input_ids.clone()
    for r, (i, j) in enumerate(zip(keep, partner, strict=True)):
        s, e = int(span[i, 0]), int(span[i, 1])
        sj = int(span[j, 0])
        corrupt_ids[r, s:e] = ids[j, sj : sj + (e - s)]
    corrupted = TokenBatch(input_ids=corrupt_ids, attention_mask=clean.attention_mask.clone(), meta=clean.meta,
                           texts=None, task=clean.task, params={**clean.params, "variant": "subject_swap"})
    return SwapPairs(clean, corrupted, target[partner].clone(), partner)


# --------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class ArgumentPassing:
    """Per-head scores [n_layers, n_heads] and the ranked heads.

    ``path_effect``: share of the subject-swap logit-difference change carried by the head's path to
    MLPs and logits; ``attn_subject``: attention from the prediction position to the subject span;
    ``decode_acc``: share of prompts where the head's decoded output ranks the own subject first
    among the relation's subjects (chance ``decode_chance``). ``ranked`` is sorted by path effect.
    ``check`` holds the causal check of the top-k heads against random heads.
    """

    path_effect: torch.Tensor
    attn_subject: torch.Tensor
    decode_acc: torch.Tensor
    decode_chance: float
    ranked: list[HeadId]
    check: dict[str, Any]
    ld_clean: float
    ld_corrupt: float
    n: int

    def top(self, k: int) -> list[HeadId]:
        return self.ranked[:k]

    def table(self, k: int = 10) -> list[dict[str, Any]]:
        return [{"head": str(h), "path_effect": float(self.path_effect[h.layer, h.head]),
                 "attn_subject": float(self.attn_subject[h.layer, h.head]),
                 "decode_acc": float(self.decode_acc[h.layer, h.head])} for h in self.ranked[:k]]


def _logit_diff(logits: torch.Tensor, end: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    last = rows_at(logits, end).float()
    return last.gather(1, a.view(-1, 1).to(last.device))[:, 0] - last.gather(1, b.view(-1, 1).to(last.device))[:, 0]


def _full_len(z_end: torch.Tensor, end: torch.Tensor, width: int) -> torch.Tensor:
    """Place [B, H, d] values at each row's ``end`` in a zero [B, T, H, d] tensor (a PatchFrom source)."""
    out = torch.zeros(z_end.shape[0], width, *z_end.shape[1:], dtype=z_end.dtype)
    out[torch.arange(z_end.shape[0]), end] = z_end
    return out


def argument_passing_heads(
    lm: LoadedModel,
    batch: TokenBatch,
    *,
    corrupted: TokenBatch | None = None,
    top_k: int = 3,
    n_random: int = 5,
    seed: int = 0,
    layers: list[int] | None = None,
    max_senders: int | None = 24,
    max_pairs: int | None = 32,
) -> ArgumentPassing:
    """Path-patching sweep over every head (or those of ``layers``), attention and decoding scores, causal check.

    ``corrupted``: the task's subject-swapped prompts (same shape as ``batch``, ``batch.meta["wrong_id"]`` =
    the swapped-in subject's answer, e.g. ``PromptSet.corrupted_batch()`` of the factual task); without it
    the swaps are built here at the token level (:func:`subject_swaps`).
    """
    if corrupted is not None:
        check_fact_batch(batch)
        if corrupted.input_ids.shape != batch.input_ids.shape or "wrong_id" not in batch.meta:
            raise TaskError("the corrupted batch must match the clean batch in shape, and the clean meta needs wrong_id",
                            "use PromptSet.clean_batch()/corrupted_batch() of an equal-length factual task")
        pairs = SwapPairs(batch, corrupted, batch.meta["wrong_id"], list(range(len(batch))))
    else:
        pairs = subject_swaps(batch, seed=seed)
    if max_pairs is not None and len(pairs.clean) > max_pairs:
        rows = sorted(random.Random(seed).sample(range(len(pairs.clean)), max_pairs))
        pairs = SwapPairs(pairs.clean.select(rows), pairs.corrupted.select(rows), pairs.partner_target[rows],
                          [pairs.partner_row[r] for r in rows])
    clean, corrupt = pairs.clean, pairs.corrupted
    g = lm.geometry
    L, H = g.n_layers, g.n_heads
    end = clean.meta["end_pos"]
    tgt, other = clean.meta["target_id"], pairs.partner_target
    width = clean.input_ids.shape[1]
    spec = CaptureSpec(sites=frozenset({Site.Z, Site.RESULT, Site.PATTERN, Site.ATTN_OUT}), query_positions=end)
    rec_c = run_capture(lm, spec, clean.input_ids, clean.attention_mask)
    rec_r = run_capture(lm, CaptureSpec(sites=frozenset({Site.Z}), query_positions=end), corrupt.input_ids,
                        corrupt.attention_mask)
    assert rec_c.logits is not None and rec_r.logits is not None
    ld_c = _logit_diff(rec_c.logits, end, tgt, other)
    ld_r = _logit_diff(rec_r.logits, end, tgt, other)
    denom = float((ld_r - ld_c).mean())
    if abs(denom) < 1e-6:
        raise TaskError("swapping subjects does not change the answer logit difference", "check the facts")
    z_r = {layer: rec_r.z[layer][:, 0] for layer in range(L)}
    metric = AnswerMetric(kind="logit_diff", end_pos=end, target_id=tgt, wrong_id=other)
    span = clean.meta["subject_span"]
    pos = torch.arange(width)
    in_span = (pos[None] >= span[:, :1]) & (pos[None] < span[:, 1:])  # [B, T]
    attn = torch.stack([(rec_c.pattern[layer][:, :, 0] * in_span[:, None].to(rec_c.pattern[layer].dtype)).sum(-1).mean(0)
                        for layer in range(L)]).float().cpu()  # [L, H]
    pool = [HeadId(m, h) for m in (layers if layers is not None else range(L)) for h in range(H)]
    screen: dict[str, Any] = {"swept": len(pool), "of": L * H}
    if max_senders is not None and len(pool) > max_senders:
        est = attribution_patching(lm, clean.input_ids, clean.attention_mask, corrupt.input_ids, corrupt.attention_mask,
                                   metric).effects.float().cpu() / denom  # estimated share of the swap effect
        half = max_senders // 2
        by_est = sorted(pool, key=lambda h: -float(est[h.layer, h.head]))[:half]
        by_attn = [h for h in sorted(pool, key=lambda h: -float(attn[h.layer, h.head])) if h not in by_est]
        pool = sorted(by_est + by_attn[: max_senders - len(by_est)])
        screen = {"swept": len(pool), "of": L * H, "screen": "attribution patching + attention to subject"}
    senders = pool
    eff = path_patching(lm, clean.input_ids, clean.attention_mask, corrupt.input_ids, corrupt.attention_mask, metric,
                        senders=senders, receivers="logits")
    path = (eff.values - eff.baseline).mean(-1) / denom  # NaN where not swept

    # decoding: own subject (last span token) vs the relation's other subjects
    rel = as_list(clean.meta["relation"])
    subj_tok = clean.input_ids[torch.arange(len(clean)), span[:, 1] - 1]
    cands: dict[str, list[int]] = {}
    for r, t in zip(rel, subj_tok.tolist(), strict=True):
        cands.setdefault(r, [])
        if t not in cands[r]:
            cands[r].append(t)
    dec = torch.zeros(L, H)
    with torch.no_grad():
        for layer in range(L):
            w = written_heads(lm, layer, rec_c.result[layer][:, 0], rec_c.attn_out[layer][:, 0])  # [B, H, d]
            logits = decode_direction(lm, w)  # [B, H, V]
            hits = torch.zeros(H)
            for b in range(len(clean)):
                c = cands[rel[b]]
                vals = logits[b][:, c]  # [H, n_c]
                hits += (vals.argmax(-1) == c.index(int(subj_tok[b]))).float()
            dec[layer] = hits / len(clean)
    chance = float(sum(1.0 / len(cands[r]) for r in rel) / len(rel))

    order = torch.nan_to_num(path, nan=-float("inf")).flatten().argsort(descending=True)
    ranked = [HeadId(int(i) // H, int(i) % H) for i in order if not torch.isnan(path.flatten()[i])]

    k = min(top_k, len(ranked))
    top = ranked[:k]
    check = _set_check(lm, clean, other, z_r, ld_c, denom, top, n_random=n_random, seed=seed) | screen
    check["top_k_path_sum"] = float(sum(path[h.layer, h.head] for h in top))
    return ArgumentPassing(path, attn, dec, chance, ranked, check, float(ld_c.mean()), float(ld_r.mean()), len(clean))


def _set_check(lm: LoadedModel, clean: TokenBatch, other: torch.Tensor, z_r: dict[int, torch.Tensor], ld_c: torch.Tensor,
               denom: float, top: list[HeadId], *, n_random: int, seed: int) -> dict[str, Any]:
    """``heads`` patched together from the corrupted run (``z_r[layer]`` [B, H, d] at ``end_pos``, all paths)
    versus ``n_random`` draws of as many other heads: per-prompt effects as shares of the mean swap effect
    ``denom``, and a paired bootstrap 95% CI of top minus the random draws' mean."""
    g = lm.geometry
    end, tgt = clean.meta["end_pos"], clean.meta["target_id"]
    width = clean.input_ids.shape[1]

    source = {layer: _full_len(z_r[layer], end, width)[None] for layer in range(g.n_layers)}

    def share(end_logits: torch.Tensor) -> torch.Tensor:
        """Per prompt [B]: the share of the mean swap effect that a patched set carries."""
        ar = torch.arange(end_logits.shape[0], device=end_logits.device)
        x = end_logits.float()
        ld = x[ar, tgt.to(x.device)] - x[ar, other.to(x.device)]
        return (ld.cpu() - ld_c.float().cpu()) / denom

    k = len(top)
    rng = random.Random(seed)
    rest = [HeadId(m, h) for m in range(g.n_layers) for h in range(g.n_heads) if HeadId(m, h) not in top]
    draws = [rng.sample(rest, k) for _ in range(n_random)] if len(rest) >= k else []
    # every set patched together from the corrupted run at END, all sets in one staggered sweep
    sets = [top, *draws]
    cache = PrefixCache(lm, clean.input_ids, clean.attention_mask, keep_layers={min(h.layer for h in s) for s in sets if s})
    top_eff, *rand = sweep_sets(cache, sets, lambda layer: source[layer], share, positions=end,
                                readout_positions=end)
    rand_mean = torch.stack(rand).mean(0) if rand else torch.full_like(top_eff, float("nan"))
    diff = bootstrap_ci(top_eff - rand_mean, seed=seed)
    return {"k": k, "top_heads": [str(h) for h in top], "top_k_effect": float(top_eff.mean()),
            "random_k_effect_mean": float(rand_mean.mean()), "random_k_effects": [float(r.mean()) for r in rand],
            "top_minus_random": diff[0], "top_minus_random_ci": [diff[1], diff[2]], "n": len(clean)}


def check_heads(lm: LoadedModel, clean: TokenBatch, corrupted: TokenBatch, heads: list[HeadId], *, n_random: int = 5,
                seed: int = 0) -> dict[str, Any]:
    """The causal check of :func:`argument_passing_heads` for given ``heads`` on other prompt pairs (e.g.
    heads ranked on one half of the prompts, checked on the other half, so the check does not reuse the
    prompts that chose them). ``clean``/``corrupted`` as in :func:`argument_passing_heads` (``wrong_id``
    in the clean meta). Returns the check dict (effects as shares of these pairs' mean swap effect)."""
    check_fact_batch(clean)
    if corrupted.input_ids.shape != clean.input_ids.shape or "wrong_id" not in clean.meta:
        raise TaskError("the corrupted batch must match the clean batch in shape, and the clean meta needs wrong_id",
                        "use PromptSet.clean_batch()/corrupted_batch() of an equal-length factual task")
    if not heads:
        raise TaskError("no heads to check", "give at least one head")
    end, tgt, other = clean.meta["end_pos"], clean.meta["target_id"], clean.meta["wrong_id"]
    spec = CaptureSpec(sites=frozenset({Site.Z}), query_positions=end)
    rec_r = run_capture(lm, spec, corrupted.input_ids, corrupted.attention_mask)
    with torch.no_grad():
        logits_c = lm.forward(clean.input_ids, clean.attention_mask)
    assert rec_r.logits is not None
    ld_c = _logit_diff(logits_c, end, tgt, other)
    denom = float((_logit_diff(rec_r.logits, end, tgt, other) - ld_c).mean())
    if abs(denom) < 1e-6:
        raise TaskError("swapping subjects does not change the answer logit difference", "check the facts")
    z_r = {layer: rec_r.z[layer][:, 0] for layer in range(lm.geometry.n_layers)}
    return _set_check(lm, clean, other, z_r, ld_c, denom, list(heads), n_random=n_random, seed=seed)
