"""Factual recall mechanisms (issue 6; METHODS.md §2).

- :func:`answer_trajectory`: logit-lens answer probability/rank after every layer, last-layer drop share.
- :func:`additive_heads` / :func:`additive_heads_frame`: subject, relation and mixed heads by direct logit
  attribution decomposed by source token group (:func:`source_dla`), checked by read ablation on held-out facts.
- :func:`argument_passing_heads`: path patching with subject swaps, attention to the subject, decoded head output;
  :func:`check_heads`: its causal check of given heads on other prompts.
- :func:`decompose_mlp` / :func:`mlp_layer_scan`: MLP output = beta-weighted head outputs + relation intercept.
- :func:`final_layer_suppression`: final-layer attention to the first token, direct effects, frequency correlation.
- :func:`choose_mitigation` / :class:`Mitigation` / :func:`mitigated`: an inference-time fix, chosen on a
  training split, evaluated on held-out facts and relations, saved as JSON + safetensors;
  :func:`split_relation_facts` splits the facts before any prompt is built.

Every analysis takes a fact batch (:mod:`headmine.causal.factual_recall.common`).
"""

from headmine.causal.factual_recall.additive_heads import (
    AdditiveConfig,
    AdditiveHeads,
    SourceDLA,
    additive_heads,
    additive_heads_frame,
    fact_prompts,
    read_ablation_check,
    source_dla,
    split_fact_prompts,
)
from headmine.causal.factual_recall.argument_passing import (
    ArgumentPassing,
    SwapPairs,
    argument_passing_heads,
    check_heads,
    subject_swaps,
)
from headmine.causal.factual_recall.common import bootstrap_ci
from headmine.causal.factual_recall.mitigation import (
    FACT_SPLITS,
    FactSplits,
    Mitigation,
    answer_scores,
    candidate_mitigations,
    choose_mitigation,
    corpus_loss,
    evaluate_mitigation,
    mitigated,
    split_facts,
    split_relation_facts,
)
from headmine.causal.factual_recall.mlp_decomposition import (
    Intercept,
    MlpDecomposition,
    decompose_mlp,
    mlp_layer_scan,
)
from headmine.causal.factual_recall.suppression import (
    Component,
    Suppression,
    final_layer_suppression,
    token_frequency,
)
from headmine.causal.factual_recall.trajectory import Trajectory, answer_trajectory

__all__ = [
    "FACT_SPLITS",
    "AdditiveConfig",
    "AdditiveHeads",
    "ArgumentPassing",
    "Component",
    "FactSplits",
    "Intercept",
    "Mitigation",
    "MlpDecomposition",
    "SourceDLA",
    "Suppression",
    "SwapPairs",
    "Trajectory",
    "additive_heads",
    "additive_heads_frame",
    "answer_scores",
    "answer_trajectory",
    "argument_passing_heads",
    "bootstrap_ci",
    "candidate_mitigations",
    "check_heads",
    "choose_mitigation",
    "corpus_loss",
    "decompose_mlp",
    "evaluate_mitigation",
    "fact_prompts",
    "final_layer_suppression",
    "mitigated",
    "mlp_layer_scan",
    "read_ablation_check",
    "source_dla",
    "split_fact_prompts",
    "split_facts",
    "split_relation_facts",
    "subject_swaps",
    "token_frequency",
]
