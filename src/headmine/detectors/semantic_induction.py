"""Semantic induction heads (Ren et al. 2024, "Identifying Semantic Induction Heads to Understand
In-Context Learning", arXiv 2402.13055, ACL Findings 2024, §3 "relation index"; spec:
shared/methods/CIRCUITS_AND_KV.md §5.2, read through a third-party audit that quotes the definition;
survey: Semantic Induction Head).

The paper's relation index of a head: over events where a triplet (head token s, relation, tail token o)
is in context, the head's attention from the current position j has its argmax on s with
A[j, s] > tau * max_{k != s} A[j, k] (tau = 2.2); for such an event, p = softmax of the head's OV output
read at s through the unembedding, q_t = max(0, p_t - mean p) over the distinct tokens visible in the
context, and the event scores q_o / sum q. A semantic induction head attends to the head token and
raises its related tail among the tokens in context.

``semantic_induction`` (probe ``semantic_relations``: three facts of a relation, then a question about
one; j = the last token, s = the subject's last token in the question or in its fact, o = the tail,
which is in context): per prompt, the event score when the event qualifies and 0 otherwise, so the mean
over prompts is the RI times the share of prompts where the head attends to s (the paper averages over
qualifying events only; a head that qualifies once would then score as high as one that always does).
Named choices:

- the OV output is read from the value vector the head actually mixes at s (capture site ``v``, times
  the head's W_O), not from the raw token embedding: the audit's main criticism of the paper's version
  is that the raw embedding ignores the head's actual input;
- key 0 (the attention sink, where most heads of a pretrained model park their attention) is left out
  of the argmax and of the tau comparison;
- the softmax runs over the visible tokens only: q_o / sum q is the same for the full-vocabulary
  softmax, because restricting it scales every p_t by one constant;
- only knowledge-graph relations (three of ``tasks.factual``'s relation files, in sentences written for
  headmine); the paper also uses syntactic dependencies (subject, object, modifier), not covered here.

Causal check: mean-ablating the top-k heads should raise the cross-entropy of the tail more than
ablating k random heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores,
    CausalCheckSpec,
    Detector,
    empty_scores,
    n_layers_heads,
    query_positions,
    register,
    require_site,
)
from headmine.detectors.target_mass import meta_tensor
from headmine.detectors.weights import CircuitWeights

TAU = 2.2
"""The paper's attention-dominance factor (2.0 and 2.5 reported similar)."""


def event_scores(q: torch.Tensor, tail: int, visible: torch.Tensor) -> torch.Tensor:
    """q_o / sum q for logits ``q`` [h, n_visible] over ``visible`` ids; ``tail`` one of them."""
    p = q.float().softmax(-1)
    excess = (p - p.mean(-1, keepdim=True)).clamp_min(0)
    idx = int((visible == tail).nonzero()[0])
    total = excess.sum(-1)
    return torch.where(total > 0, excess[:, idx] / total.clamp_min(1e-30), torch.zeros_like(total))


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: CircuitWeights | None = None) -> BatchScores:
    """Per prompt: the event score where the head's attention from the last token singles out the
    subject (argmax, tau-dominant, key 0 left out), else 0."""
    if weights is None:
        raise DetectorError("semantic_induction needs CircuitWeights", "pass weights=circuit_weights(lm)")
    patterns = require_site(record, Site.PATTERN, "semantic_induction")
    values = require_site(record, Site.V, "semantic_induction")
    head_pos = meta_tensor(meta, "head_pos", "semantic_induction", "semantic_relations").cpu()
    tail_id = meta_tensor(meta, "tail_id", "semantic_induction", "semantic_relations").cpu()
    n_layers, n_heads = n_layers_heads(record, meta)
    mask = record.attention_mask.cpu().bool()
    ids = record.input_ids.cpu()
    b = mask.shape[0]
    end = mask.sum(1) - 1
    out = empty_scores(b, n_layers, n_heads)
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)
        qpos = query_positions(record, a.shape[2])
        v = values[layer].detach().cpu().to(torch.float32)  # [b, pos, kv_head, d_head]
        heads = record.heads[layer]
        group = max(1, n_heads // v.shape[2])
        for i in range(b):
            hit = (qpos[i] == end[i]).nonzero()
            if len(hit) == 0:
                continue
            row = a[i, :, int(hit[0])].clone()  # [h, k]
            row[:, 0] = -1.0  # the sink is not a candidate
            row[:, ~mask[i]] = -1.0
            top2 = row.topk(2, dim=-1)
            arg, first, second = top2.indices[:, 0], top2.values[:, 0], top2.values[:, 1]
            qualifies = (arg[:, None] == head_pos[i][None, :]).any(-1) & (first > TAU * second.clamp_min(0))
            visible = ids[i, mask[i]].unique()
            val = torch.zeros(len(heads), dtype=torch.float64)
            for j, h in enumerate(heads):
                if not qualifies[j]:
                    continue
                vec = v[i, int(arg[j]), h // group] @ weights.W_O[layer, h].to(torch.float32)  # [d_model]
                logits = weights.logits(vec[None], visible)  # [1, n_visible]
                val[j] = float(event_scores(logits, int(tail_id[i]), visible)[0])
            out[i, layer, heads] = val
    return BatchScores(out)


DETECTOR = register(Detector(
    name="semantic_induction", head_type="Semantic Induction Head", task="semantic_relations",
    sites=frozenset({Site.PATTERN, Site.V}), causal=CausalCheckSpec(task="semantic_relations"), score=score,
    threshold=0.3, needs_weights=True,
    definition="relation index: attends from the question to the head entity and its OV raises the related "
               "tail among the tokens in context (Ren et al. 2024; 0 where the attention does not single out "
               "the head entity)",
))
