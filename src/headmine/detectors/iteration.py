"""Iteration heads (Cabannes et al. 2024, "Iteration Head: A Mechanistic Study of Chain-of-Thought",
arXiv 2406.02128, §3-4 and Fig. 5; spec: shared/methods/CIRCUITS_AND_KV.md §5.1; survey: Iteration Head).

On an iterative chain of thought x_1 .. x_L EoI s_1 .. s_L (s_t = F(s_{t-1}, x_t)), the iteration head
at the position holding s_{t-1} (EoI plays s_0) attends to x_t, the input the next step needs: query
EoI + t - 1 attends to key t. The paper's evaluator (``AttentionEval`` of facebookresearch/pal) measures
*peakiness*: the mean attention on those targets. Score here: for each such query row (meta
``iteration_target`` of the ``iteration`` probe), the raw attention on its one target key, averaged
over the rows of a sequence (no renormalisation: a head that parks its attention on the first token
scores low). The paper's second metric, invariance across sequences, is not used; its numeric cut-offs
are not stated in the sources read (spec §7.5), so the threshold here (0.4) is this library's.

For a pretrained model the task is given in context (several solved examples a row; rule parity by
default). Causal check: mean-ablating the top-k heads should raise the loss on the chain-of-thought
tokens more than ablating k random heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headmine.capture.records import CaptureRecord
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, register
from headmine.detectors.target_mass import key_per_query_template, meta_tensor, target_mass_score


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Mean raw attention from the query holding s_{t-1} to x_t, per sequence."""
    targets = meta_tensor(meta, "iteration_target", "iteration", "iteration")
    template = key_per_query_template(targets, record.input_ids.shape[1])
    return target_mass_score(record, template, meta, detector="iteration")


DETECTOR = register(Detector(
    name="iteration", head_type="Iteration Head", task="iteration", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="iteration"), score=score, threshold=0.4,
    definition="peakiness: attention from the chain-of-thought step s_{t-1} to the input x_t it needs next "
               "(Cabannes et al. 2024)",
))
