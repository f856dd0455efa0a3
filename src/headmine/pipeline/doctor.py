"""Self-checks that a model's per-head sites are wired correctly, each with its measured value.

The same checks back `headmine doctor MODEL` and the adapter conformance suite.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.capture.hooks import count_hooks
from headmine.causal import Gate, Zero, intervening, run_with_interventions
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    value: float
    detail: str


def _probe_batch(lm: LoadedModel, seq: int = 12, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = min(lm.geometry.vocab_size, len(lm.tokenizer)) if lm.tokenizer is not None else lm.geometry.vocab_size
    ids = torch.randint(5, max(vocab, 6), (batch, seq), generator=g)
    return ids.to(lm.device), torch.ones_like(ids).to(lm.device)


def _sample_heads(lm: LoadedModel, n: int = 3, seed: int = 0) -> list[HeadId]:
    heads = lm.geometry.heads()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(heads), generator=g)[:n].tolist()
    return [heads[i] for i in sorted(idx)]


def check_gate_identity(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> CheckResult:
    plain = lm.forward(ids, mask)
    gated = run_with_interventions(lm, ids, mask, [Gate(factors=torch.ones(lm.geometry.n_layers, lm.geometry.n_heads))])
    diff = (plain - gated).abs().max().item()
    return CheckResult("all-ones gate reproduces the plain forward", diff == 0.0, diff, "max |logit difference|")


def check_hooks_removed(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> CheckResult:
    before = count_hooks(lm.model)
    try:
        with intervening(lm, [Zero(heads=(HeadId(0, 0),))]):
            raise RuntimeError("injected")
    except RuntimeError:
        pass
    run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN, Site.Z, Site.RESID})), ids, mask)
    after = count_hooks(lm.model)
    return CheckResult("no hook left after exit (also after an exception)", before == after, after - before, "hooks added")


def check_zero_equals_weight_surgery(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> CheckResult:
    worst = 0.0
    for head in _sample_heads(lm):
        ablated = run_with_interventions(lm, ids, mask, [Zero(heads=(head,))])
        entries = lm.adapter.out_proj_head_weight(head.layer, head.head)  # a view into the raw weight
        saved = entries.detach().clone()
        with torch.no_grad():
            entries.zero_()
            try:
                surgery = lm.forward(ids, mask)
            finally:
                entries.copy_(saved)
        worst = max(worst, (ablated - surgery).abs().max().item())
    return CheckResult("zeroing z_h equals zeroing W_O[h]", worst < 1e-4, worst, "max |logit difference| over sampled heads")


def check_results_sum(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> CheckResult:
    """Per-head results (z_h @ W_O[h], from the adapter's slicing) + bias equal the projection applied to z."""
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.RESULT, Site.Z})), ids, mask)
    worst = 0.0
    for layer in rec.result:
        total = rec.result[layer].sum(2)
        bias = lm.adapter.b_O(layer)
        if bias is not None:
            total = total + bias
        with torch.no_grad():
            out = lm.adapter.out_proj(layer)(rec.z[layer].flatten(-2))
        worst = max(worst, ((total - out).abs().max() / out.abs().max().clamp_min(1e-12)).item())
    return CheckResult(
        "per-head results + bias sum to the projection output", worst < 1e-5, worst, "max |difference| / max |output|"
    )


def check_patterns(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> CheckResult:
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN})), ids, mask)
    worst_sum, worst_causal = 0.0, 0.0
    for pattern in rec.pattern.values():
        worst_sum = max(worst_sum, (pattern.sum(-1) - 1).abs().max().item())
        if lm.adapter.is_causal:
            upper = torch.triu(torch.ones(pattern.shape[-2:], dtype=torch.bool, device=pattern.device), 1)
            worst_causal = max(worst_causal, pattern[..., upper].abs().max().item() if upper.any() else 0.0)
    ok = worst_sum < 1e-4 and worst_causal == 0.0
    return CheckResult(
        "pattern rows sum to 1" + (" and are causal" if lm.adapter.is_causal else ""), ok, worst_sum,
        f"max |row sum - 1|; max mass above the diagonal {worst_causal:.2e}",
    )


def check_gqa_mapping(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> CheckResult:
    """Recompute each query head's pattern from captured q and its mapped k: must match the model's."""
    g = lm.geometry
    if g.n_kv_heads == g.n_heads:
        return CheckResult("GQA mapping matches the model's repeat_kv", True, 0.0, "not grouped: 1 query head per KV head")
    layer = 0
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN, Site.V, Site.Z}), layers=(layer,)), ids, mask)
    worst = 0.0
    v = rec.v[layer]  # [batch, pos, kv_head, d_head]
    for head in range(g.n_heads):
        pattern = rec.pattern[layer][:, head]  # [batch, q, k]
        z_pred = torch.einsum("bqk,bkd->bqd", pattern, v[:, :, g.kv_head_of(head)])
        worst = max(worst, (z_pred - rec.z[layer][:, :, head]).abs().max().item())
    return CheckResult("GQA mapping matches the model's repeat_kv", worst < 1e-4, worst, "max |z - pattern @ v[kv_head_of(h)]|")


def check_pattern_recompute(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> CheckResult:
    """Patterns recomputed from q and k (what a capture under SDPA returns) equal the eager kernel's."""
    name = "patterns recomputed from q,k equal eager attention's"
    if not lm.adapter.recomputes_patterns:
        return CheckResult(name, True, 0.0, "not supported by this adapter: patterns are captured with eager attention")
    spec = CaptureSpec(sites=frozenset({Site.PATTERN}), keep_logits=False)
    eager = run_capture(lm, replace(spec, pattern_mode="eager"), ids, mask)
    recomputed = run_capture(lm, replace(spec, pattern_mode="recompute"), ids, mask)
    worst = max((eager.pattern[layer].float() - recomputed.pattern[layer].float()).abs().max().item() for layer in eager.pattern)
    tolerance = 1e-5 if eager.pattern[0].dtype == torch.float32 else 2e-2
    return CheckResult(name, worst <= tolerance, worst, f"max |recomputed - eager| (tolerance {tolerance:g})")


def run_checks(lm: LoadedModel) -> list[CheckResult]:
    """All self-checks on a small random-token batch."""
    ids, mask = _probe_batch(lm)
    checks = [check_gate_identity, check_hooks_removed, check_zero_equals_weight_surgery,
              check_results_sum, check_patterns, check_gqa_mapping, check_pattern_recompute]
    return [check(lm, ids, mask) for check in checks]
