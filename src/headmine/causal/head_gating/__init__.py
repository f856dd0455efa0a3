"""Causal Head Gating (CHG, Nam et al. 2025): fit one sigmoid gate per (layer, query head).

Spec: ``shared/methods/METHODS.md`` section 1 (paper + official code). The model is frozen; a
:class:`~headmine.causal.Gate` multiplies each head's ``z`` (input of the attention output projection)
by ``sigmoid(theta[l, h])``. Loss per gate set (seed)::

    loss = -mean_rows(mean_target_tokens log p(y_t | y_<t))  -  lam * mean_{l,h} clamp(theta, -4, 4)

Three fits: lam = 0 from a uniform random start (G), then G+ (lam = +0.1) and G- (lam = -0.1), both
from the lam = 0 solution. Scores: facilitating F = G-, interfering N = 1 - G+, irrelevant
I = G+ (1 - G-). K gate sets (seeds) are fitted in one batched pass: the batch is repeated K times
and ``Gate(factors=[K*B, L, H])`` gives each copy its own gates. Seeds are independent: the loss is
the sum of the per-seed losses, Adam is element-wise and the gradient-norm clip is applied per seed
(the official code clips jointly; per-seed clipping makes one K-seed pass equal K separate fits).

Data: :class:`GatingData` (right-padded ids, attention mask, and a ``loss_mask`` that is True on the
tokens that are predicted, i.e. targets; position 0 is never a target).

Modules: ``data`` (GatingData and its builders), ``config`` (CHGConfig, presets), ``logprob`` (gated
target log-probs), ``fit`` (the Adam stages and :func:`fit_chg`), ``results`` (CHGResult, labels),
``analysis`` (targeted ablation, agreement with activation patching).
"""

from headmine.causal.head_gating.analysis import (
    default_ks,
    mediating_heads,
    patching_agreement,
    targeted_ablation,
)
from headmine.causal.head_gating.config import PRESETS, CHGConfig, from_preset
from headmine.causal.head_gating.data import (
    GatingData,
    from_prompt_set,
    from_token_batch,
    load_data_file,
    prompt_target_data,
    repeated_tokens_data,
    task_data,
    token_data,
)
from headmine.causal.head_gating.fit import (
    Batches,
    LossFn,
    Progress,
    StageFit,
    chg_loss_fn,
    fit_chg,
    fit_stage,
    init_logits,
)
from headmine.causal.head_gating.logprob import gated_logprob, mean_logprob
from headmine.causal.head_gating.results import LABELS, CHGResult, label_codes

__all__ = [
    "LABELS",
    "PRESETS",
    "Batches",
    "CHGConfig",
    "CHGResult",
    "GatingData",
    "LossFn",
    "Progress",
    "StageFit",
    "chg_loss_fn",
    "default_ks",
    "fit_chg",
    "fit_stage",
    "from_preset",
    "from_prompt_set",
    "from_token_batch",
    "gated_logprob",
    "init_logits",
    "label_codes",
    "load_data_file",
    "mean_logprob",
    "mediating_heads",
    "patching_agreement",
    "prompt_target_data",
    "repeated_tokens_data",
    "targeted_ablation",
    "task_data",
    "token_data",
]
