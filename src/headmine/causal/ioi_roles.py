"""The IOI circuit role by role (Wang et al. 2022, arXiv 2211.00593; CIRCUITS_AND_KV.md §1.3): every head
is classified by the test that defines its class, on FIT prompts; the circuit is evaluated on HELD-OUT ones.

Tests (path patching = :func:`headmine.causal.path_patching.path_patching`, sender value from the ABC
prompts, MLPs free, exact):

- name movers (NM): path patching sender -> logits lowers the logit difference (LD) AND attention
  END->IO exceeds END->S1 and END->S2 AND the OV circuit copies names (copy score, below);
- negative name movers: the same path patching *raises* LD, attention END->IO, negative copy score;
- S-inhibition: path patching sender -> the NMs' queries lowers LD (attention END->S2 reported);
- induction / duplicate-token: path patching sender -> the S-inhibition heads' values lowers LD; the
  head is "induction" when its attention S2->S1+1 exceeds S2->S1, else "duplicate token";
- previous token: path patching sender -> the induction heads' keys lowers LD (attention S1+1->S1 reported);
- backup name movers: with the NMs mean-ablated, path patching sender -> logits again; a backup head's
  direct effect grows (compensation; heads in layers before the first NM are not re-tested: their own
  input cannot change);
- direct-effect heads: direct logit attribution of LD (DLA, one forward) differs from zero.

Selection rule (chosen on FIT prompts and stated with every run): a head's relative effect
``r = mean ΔLD / mean LD`` must pass ``|r| >= tau`` with ``tau = max(floor, 3 x 1.4826 x MAD)`` over the
eligible heads (a robust outlier rule; ``floor`` default 2%), and the 95% bootstrap CI of its per-prompt
ΔLD must exclude zero on the same side. At most ``max_per_role`` heads (largest |r|) per role. Copy score:
the head's OV output for the value vector at the IO, S1 and S2 positions (as if it attended there with
weight 1), read through the final norm's gain and the unembedding; a hit when the name at that position is
in the top 5 of the whole vocabulary (negative: bottom 5); score = hits / 3N (paper: > 95% for GPT-2's
NMs). Roles are exclusive, assigned in the order above. GQA/MQA: patching a receiver's k or v patches its
whole KV head (all query heads sharing it).

Each role's heads are compared with random heads of the same number on HELD-OUT prompts: LD with the
group mean-ablated (ABC per-template means) vs 30 random groups (percentile bootstrap CI).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headmine import catalog
from headmine.capture import CaptureSpec, run_capture
from headmine.causal.direct_logit_attribution import direct_logit_attribution
from headmine.causal.engine import intervening
from headmine.causal.fast_sweep import PrefixCache
from headmine.causal.ioi_circuit_eval import (
    IOIBatch,
    TiledMean,
    abc_means,
    ablation_of,
    circuit_faithfulness,
    mean_ci,
    metric_under,
    row_values,
)
from headmine.causal.path_patching import path_patching
from headmine.core.errors import InputError
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel
from headmine.tasks.ioi import ioi

ROLES = ("name_mover", "negative_name_mover", "backup_name_mover", "s_inhibition", "induction",
         "duplicate_token", "previous_token")
ROLE_TYPES = {"name_mover": "Name Mover Head", "negative_name_mover": "Negative Name Mover Head",
              "backup_name_mover": "Backup Name Mover Head", "s_inhibition": "S-Inhibition Head",
              "induction": "Induction Head", "duplicate_token": "Duplicate Token Head",
              "previous_token": "Previous Token Head"}
"""Role -> survey head type (``headmine catalog``)."""
EDGES = (("s_inhibition", "name_mover", "q"), ("induction", "s_inhibition", "v"),
         ("duplicate_token", "s_inhibition", "v"), ("previous_token", "induction", "k"))
"""(sender role, receiver role, receiver input) of the path-patching tests: the drawn circuit's edges."""


@dataclass(frozen=True, kw_only=True)
class IOIRolesConfig:
    """``n_fit`` prompts choose the roles, ``n_heldout`` (another seed) evaluate them; ``floor`` and
    ``mad_k`` set the selection threshold; ``copy_min``: copy score a (negative) name mover needs."""

    n_fit: int = 32
    n_heldout: int = 32
    seed: int = 0
    floor: float = 0.02
    mad_k: float = 3.0
    copy_min: float = 0.5
    max_per_role: int = 8
    n_random: int = 30
    abc_per_template: int = 8
    max_rows: int = 256

    def __post_init__(self) -> None:
        for name, least in (("n_fit", 2), ("n_heldout", 2), ("max_per_role", 1), ("abc_per_template", 1)):
            if getattr(self, name) < least:
                raise InputError(f"{name} must be at least {least}, got {getattr(self, name)}", "ask for more prompts / heads")
        if not 0 < self.floor < 1 or self.mad_k <= 0 or not 0 <= self.copy_min <= 1 or self.n_random < 0:
            raise InputError("floor must lie in (0, 1), mad_k > 0, copy_min in [0, 1], n_random >= 0",
                             "the defaults are floor=0.02, mad_k=3, copy_min=0.5, n_random=30")


@dataclass
class IOIRoles:
    """What :func:`ioi_roles` found: roles -> heads, per-test evidence ([L, H] arrays), the random-head
    comparisons, the faithfulness on held-out prompts, thresholds and notes."""

    model: str
    n_layers: int
    n_heads: int
    config: IOIRolesConfig
    roles: dict[str, list[HeadId]]
    direct_effect: list[HeadId]
    evidence: dict[str, np.ndarray]
    thresholds: dict[str, float]
    vs_random: dict[str, dict[str, Any]]
    faithfulness: dict[str, Any]
    ld_fit: float
    ld_heldout: float
    copy: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def role_of(self) -> dict[HeadId, str]:
        return {h: r for r, hs in self.roles.items() for h in hs}


# --------------------------------------------------------------------------- the selection rule
def select(deltas: torch.Tensor, ld: float, eligible: torch.Tensor, sign: int, *, floor: float, mad_k: float,
           max_n: int, exclude: set[HeadId] | frozenset[HeadId] = frozenset(), seed: int = 0) -> tuple[list[HeadId], float, torch.Tensor]:
    """Heads whose relative effect ``mean ΔLD / ld`` passes the robust outlier rule on side ``sign``.

    ``deltas`` [L, H, B] per-prompt changes (NaN where not tested); ``eligible`` bool [L, H]. Returns the
    heads (largest effect first), the threshold tau and the relative effects [L, H]."""
    if ld <= 0:
        raise InputError(f"the model's mean logit difference on IOI is {ld:.3f} <= 0", "the class tests need a model that does IOI")
    rel = deltas.mean(-1) / ld
    ok = eligible & torch.isfinite(rel)
    vals = rel[ok].double().numpy()
    if vals.size == 0:
        return [], float("nan"), rel
    mad = float(np.median(np.abs(vals - np.median(vals))))
    tau = max(floor, mad_k * 1.4826 * mad)
    cand = ok & (sign * rel >= tau)
    heads: list[tuple[float, HeadId]] = []
    rng = np.random.default_rng(seed)
    for lay, hd in cand.nonzero().tolist():
        h = HeadId(lay, hd)
        if h in exclude:
            continue
        x = deltas[lay, hd].double().numpy()
        boots = x[rng.integers(0, x.size, size=(2000, x.size))].mean(1)
        lo, hi = np.quantile(boots, [0.025, 0.975])
        if (sign < 0 and hi < 0) or (sign > 0 and lo > 0):
            heads.append((float(sign * rel[lay, hd]), h))
    heads.sort(key=lambda t: -t[0])
    return [h for _, h in heads[:max_n]], tau, rel


# --------------------------------------------------------------------------- signatures
ATTENTION_SIGNATURES = (("END", "IO"), ("END", "S1"), ("END", "S2"), ("S2", "S1"), ("S2", "S1+1"), ("S1+1", "S1"))


def attention_signatures(lm: LoadedModel, batch: IOIBatch) -> dict[str, torch.Tensor]:
    """Mean attention probability ``q->k`` per head, [L, H], for each pair in ATTENTION_SIGNATURES."""
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN}), keep_logits=False), batch.ids, batch.mask)
    g = lm.geometry
    rows = torch.arange(batch.n)
    out = {f"attn_{q}->{k}": torch.zeros(g.n_layers, g.n_heads) for q, k in ATTENTION_SIGNATURES}
    for layer, a in rec.pattern.items():
        a = a.float().cpu()
        for q, k in ATTENTION_SIGNATURES:
            out[f"attn_{q}->{k}"][layer, rec.heads[layer]] = a[rows, :, batch.pos[q], batch.pos[k]].mean(0)
    return out


def copy_scores(lm: LoadedModel, batch: IOIBatch, heads: Sequence[HeadId], *, top: int = 5) -> dict[HeadId, tuple[float, float]]:
    """(copy score, negative copy score) per head: share of the names at IO, S1, S2 whose own token is in
    the top (bottom) ``top`` of the vocabulary when the head's OV circuit reads that position's value vector."""
    if not heads:
        return {}
    a, g = lm.adapter, lm.geometry
    layers = tuple(sorted({h.layer for h in heads}))
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.V}), layers=layers, keep_logits=False), batch.ids, batch.mask)
    rows = torch.arange(batch.n).repeat(3)
    pos = torch.cat([batch.pos["IO"], batch.pos["S1"], batch.pos["S2"]])
    names = batch.ids[rows, pos]
    w_u = a.W_U()
    final = a.final_norm_spec()
    out: dict[HeadId, tuple[float, float]] = {}
    with torch.no_grad():
        for h in heads:
            v = rec.v[h.layer][rows, pos, g.kv_head_of(h.head)].float()  # [3B, d_head]
            res = v.to(w_u.device) @ a.W_O(h.layer)[h.head].float().to(w_u.device)  # [3B, d_model]
            post = a.attn_post_norm_spec(h.layer)
            if post is not None:
                res = res * post.weight.to(res.device)
            if final is not None:
                res = (res - res.mean(-1, keepdim=True) if final.centred else res) * final.weight.to(res.device)
            logits = res @ w_u.float()
            own = logits.gather(1, names.to(logits.device)[:, None])
            pos_hit = float(((logits > own).sum(1) < top).float().mean())
            neg_hit = float(((logits < own).sum(1) < top).float().mean())
            out[h] = (pos_hit, neg_hit)
    return out


# --------------------------------------------------------------------------- random-head comparison
def versus_random(cache: PrefixCache, batch: IOIBatch, heads: Sequence[HeadId], values: dict[int, torch.Tensor],
                  all_heads: Sequence[HeadId], n_heads: int, *, n_random: int, seed: int, max_rows: int) -> dict[str, Any]:
    """ΔLD with ``heads`` mean-ablated vs ``n_random`` random groups of the same size (held-out prompts)."""
    if not heads:
        return {}
    rng = np.random.default_rng(seed)
    others = [h for h in all_heads if h not in set(heads)]
    groups = [list(heads)] + [[others[i] for i in rng.choice(len(others), size=min(len(heads), len(others)), replace=False)]
                              for _ in range(n_random)]
    res = metric_under(cache, batch.metric, [ablation_of(gr, batch, n_heads) for gr in groups], values, max_rows=max_rows)
    base = batch.metric(cache.logits).cpu()
    d = res - base
    m, lo, hi = mean_ci(d[0], seed=seed)
    rand = d[1:].mean(1).double().numpy()
    frac = float((np.abs(rand) >= abs(m)).mean()) if rand.size else float("nan")
    return {"n_heads": len(heads), "delta_ld": m, "delta_ld_ci": [lo, hi], "random_mean": float(rand.mean()) if rand.size else None,
            "random_q95_abs": float(np.quantile(np.abs(rand), 0.95)) if rand.size else None,
            "share_random_as_large": frac, "beats_random": bool(rand.size) and frac < 0.05 and (lo > 0 or hi < 0)}


# --------------------------------------------------------------------------- the run
def ioi_roles(lm: LoadedModel, config: IOIRolesConfig | None = None, *, log: Any = None) -> IOIRoles:
    """Classify every head into the IOI roles (FIT prompts) and evaluate the circuit (HELD-OUT prompts)."""
    cfg = config or IOIRolesConfig()
    t0 = time.perf_counter()
    say = log or (lambda *a: None)
    g = lm.geometry
    fit = IOIBatch.of(ioi(lm.tokenizer, n=cfg.n_fit, seed=cfg.seed))
    held = IOIBatch.of(ioi(lm.tokenizer, n=cfg.n_heldout, seed=cfg.seed + 1))
    means = abc_means(lm, sorted(set(fit.template.tolist()) | set(held.template.tolist())),
                      n_per_template=cfg.abc_per_template, seed=cfg.seed + 1000)
    fit_vals, held_vals = row_values(means, fit), row_values(means, held)
    fit_cache = PrefixCache(lm, fit.ids, fit.mask)
    ld_fit = float(batch_ld(fit, fit_cache).mean())
    notes: list[str] = []
    if ld_fit <= 0:
        raise InputError(f"{lm.name} has mean logit difference {ld_fit:.3f} <= 0 on the IOI fit prompts",
                         "the role tests are meaningless on a model that does not do IOI")
    kw: dict[str, Any] = {"floor": cfg.floor, "mad_k": cfg.mad_k, "max_n": cfg.max_per_role, "seed": cfg.seed}
    evidence: dict[str, np.ndarray] = {}
    thresholds: dict[str, float] = {}
    every = torch.ones(g.n_layers, g.n_heads, dtype=torch.bool)

    def pp(receivers: Any, inp: str = "qkv", ablate: Any = (), senders: Any = None) -> torch.Tensor:
        with intervening(lm, list(ablate)):
            eff = path_patching(lm, fit.ids, fit.mask, fit.corr_ids, fit.corr_mask, fit.metric, senders=senders,
                                receivers=receivers, receiver_input=inp, max_rows=cfg.max_rows)
        return eff.values - eff.baseline

    say("signatures: attention and direct effects")
    sig = attention_signatures(lm, fit)
    evidence.update({k: v.numpy() for k, v in sig.items()})
    d_logits = pp("logits")
    to_io = (sig["attn_END->IO"] > sig["attn_END->S1"]) & (sig["attn_END->IO"] > sig["attn_END->S2"])
    nm_cand, thresholds["direct"], rel = select(d_logits, ld_fit, every, -1, **kw)
    neg_cand, _, _ = select(d_logits, ld_fit, every, +1, **kw)
    evidence["direct_path"] = rel.numpy()
    cand = nm_cand + neg_cand
    rng = np.random.default_rng(cfg.seed)
    sample = [g.heads()[i] for i in rng.choice(g.n_total_heads, size=min(20, g.n_total_heads), replace=False)]
    copies = copy_scores(lm, fit, list(dict.fromkeys(cand + sample)))
    copy_avg = (float(np.mean([copies[h][0] for h in sample])), float(np.mean([copies[h][1] for h in sample])))
    thresholds["copy_min"] = cfg.copy_min
    roles: dict[str, list[HeadId]] = {r: [] for r in ROLES}
    roles["name_mover"] = [h for h in nm_cand if to_io[h.layer, h.head] and copies[h][0] >= cfg.copy_min]
    roles["negative_name_mover"] = [h for h in neg_cand if to_io[h.layer, h.head] and copies[h][1] >= cfg.copy_min]
    dropped = [h for h in cand if h not in roles["name_mover"] + roles["negative_name_mover"]]
    if dropped:
        notes.append("direct-path heads without the attention or copy signature (no NM role): " + ", ".join(map(str, dropped)))
    taken = set(roles["name_mover"]) | set(roles["negative_name_mover"])

    if roles["name_mover"]:
        say("backup name movers: direct effects with the name movers mean-ablated")
        nm_abl = TiledMean(heads=tuple(roles["name_mover"]), values=fit_vals)
        # a head before the first name mover's layer cannot see the ablation in its own input: not re-tested
        first = min(h.layer for h in roles["name_mover"])
        d_abl = pp("logits", ablate=[nm_abl], senders=[h for h in g.heads() if h.layer >= first])
        change = d_abl - d_logits
        evidence["direct_path_nm_ablated"] = (d_abl.mean(-1) / ld_fit).numpy()
        roles["backup_name_mover"], thresholds["backup"], rel_b = select(change, ld_fit, every, -1, exclude=taken, **kw)
        evidence["backup_compensation"] = rel_b.numpy()
        taken |= set(roles["backup_name_mover"])
        say("S-inhibition: path patching into the name movers' queries")
        d_q = pp(roles["name_mover"], "q")
        roles["s_inhibition"], thresholds["s_inhibition"], rel_q = select(d_q, ld_fit, every, -1, exclude=taken, **kw)
        evidence["pp_nm_q"] = rel_q.numpy()
        taken |= set(roles["s_inhibition"])
    else:
        notes.append("no name movers passed their test: S-inhibition, backup and earlier classes were not tested")
    if roles["s_inhibition"]:
        say("induction / duplicate: path patching into the S-inhibition heads' values")
        d_v = pp(roles["s_inhibition"], "v")
        found, thresholds["s_inh_values"], rel_v = select(d_v, ld_fit, every, -1, exclude=taken, **kw)
        evidence["pp_sinh_v"] = rel_v.numpy()
        ind = sig["attn_S2->S1+1"] >= sig["attn_S2->S1"]
        roles["induction"] = [h for h in found if ind[h.layer, h.head]]
        roles["duplicate_token"] = [h for h in found if not ind[h.layer, h.head]]
        taken |= set(found)
    if roles["induction"]:
        say("previous token: path patching into the induction heads' keys")
        d_k = pp(roles["induction"], "k")
        roles["previous_token"], thresholds["induction_keys"], rel_k = select(d_k, ld_fit, every, -1, exclude=taken, **kw)
        evidence["pp_ind_k"] = rel_k.numpy()
    say("direct-effect heads (DLA)")
    dla = direct_logit_attribution(lm, fit.ids, fit.mask, fit.metric).heads
    de_neg, thresholds["dla"], rel_d = select(-dla, ld_fit, every, -1, **kw)  # -DLA: same sign convention as ΔLD
    de_pos, _, _ = select(-dla, ld_fit, every, +1, **kw)
    evidence["dla"] = (-rel_d).numpy()

    say("held-out: roles vs random heads, faithfulness")
    held_cache = PrefixCache(lm, held.ids, held.mask)
    vs = {r: versus_random(held_cache, held, hs, held_vals, g.heads(), g.n_heads, n_random=cfg.n_random,
                           seed=cfg.seed, max_rows=cfg.max_rows) for r, hs in roles.items() if hs}
    vs["direct_effect"] = dla_vs_random(lm, held, de_neg + de_pos, n_random=cfg.n_random, seed=cfg.seed)
    faith = circuit_faithfulness(lm, held, roles, held_vals, n_random=min(cfg.n_random, 20), seed=cfg.seed,
                                 max_rows=cfg.max_rows)
    copy = {str(h): {"copy": c[0], "negative_copy": c[1]} for h, c in copies.items() if h in cand}
    copy["average_of_20_random_heads"] = {"copy": copy_avg[0], "negative_copy": copy_avg[1]}
    return IOIRoles(model=lm.name, n_layers=g.n_layers, n_heads=g.n_heads, config=cfg, roles=roles,
                    direct_effect=de_neg + de_pos, evidence=evidence, thresholds=thresholds, vs_random=vs,
                    faithfulness=faith, ld_fit=ld_fit, ld_heldout=float(batch_ld(held, held_cache).mean()), copy=copy,
                    notes=notes, duration_s=time.perf_counter() - t0)


def batch_ld(batch: IOIBatch, cache: PrefixCache) -> torch.Tensor:
    """Per-prompt logit difference of the unmodified model."""
    return batch.metric(cache.logits).cpu()


def dla_vs_random(lm: LoadedModel, batch: IOIBatch, heads: Sequence[HeadId], *, n_random: int, seed: int) -> dict[str, Any]:
    """Summed |DLA| of ``heads`` vs random groups of the same size, on ``batch`` (per-prompt bootstrap CI)."""
    if not heads:
        return {}
    dla = direct_logit_attribution(lm, batch.ids, batch.mask, batch.metric).heads.abs()  # [L, H, B]
    def total(hs: Sequence[HeadId]) -> torch.Tensor:
        return torch.stack([dla[h.layer, h.head] for h in hs]).sum(0)
    rng = np.random.default_rng(seed)
    pool = [h for h in lm.geometry.heads() if h not in set(heads)]
    rand = np.array([float(total([pool[i] for i in rng.choice(len(pool), size=min(len(heads), len(pool)), replace=False)]).mean())
                     for _ in range(n_random)])
    m, lo, hi = mean_ci(total(heads), seed=seed)
    frac = float((rand >= m).mean()) if rand.size else float("nan")
    return {"n_heads": len(heads), "sum_abs_dla": m, "sum_abs_dla_ci": [lo, hi], "random_mean": float(rand.mean()) if rand.size else None,
            "share_random_as_large": frac, "beats_random": bool(rand.size) and frac < 0.05}


# --------------------------------------------------------------------------- catalog links
_LINKS = {
    "Name Mover Head": "path patching sender -> logits lowers the IOI logit difference, attention END->IO, OV copy score",
    "Negative Name Mover Head": "path patching sender -> logits raises the IOI logit difference, attention END->IO, negative copy score",
    "Backup Name Mover Head": "direct effect that appears once the primary name movers are mean-ablated (compensation)",
    "S-Inhibition Head": "path patching sender -> the name movers' queries lowers the IOI logit difference",
}
for _type, _note in _LINKS.items():
    catalog.register_link(_type, catalog.DetectorLink(detector="ioi_roles", task="ioi", kind="defining_test", note=_note))
for _type, _note in (("Induction Head", "in the IOI circuit: path patching into the S-inhibition heads' values, attention S2->S1+1"),
                     ("Duplicate Token Head", "in the IOI circuit: path patching into the S-inhibition heads' values, attention S2->S1"),
                     ("Previous Token Head", "in the IOI circuit: path patching into the induction heads' keys")):
    catalog.register_link(_type, catalog.DetectorLink(detector="ioi_roles", task="ioi", kind="causal", note=_note))
catalog.register_link("Direct-Effect Head", catalog.DetectorLink(
    detector="ioi_roles", task="ioi", kind="defining_test",
    note="direct logit attribution of the answer's logit difference beats random heads of the same number "
         "(Tigges et al. 2023 define the type by direct effect on sentiment logits; here measured on IOI)"))

