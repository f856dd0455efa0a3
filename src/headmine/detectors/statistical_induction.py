"""Statistical induction heads (Edelman et al. 2024, "The Evolution of Statistical Induction Heads:
In-Context Learning Markov Chains", arXiv 2402.11004, §3-4; survey: Statistical Induction Head) and
n-gram heads (Akyurek et al. 2024, "In-Context Language Learning: Architectures and Algorithms",
arXiv 2401.12973, §5; survey: N-gram Head), on in-context Markov chains.

- ``statistical_induction`` (probe ``markov_chain``, order 1): in the paper's trained two-layer model the
  second-layer head attends from position t to every earlier position j whose PREVIOUS token equals
  x_t, so its output averages the tokens that followed x_t: the in-context bigram distribution. Score:
  the fraction of the head's attention (key 0 excluded, renormalised: ``template_score``) on those
  positions, P[i, j] = tok_{j-1} == tok_i, j - 1 < i. It is the induction template, but on a chain of a
  few states where every token recurs many times, so the target set of a row is large and the head must
  spread its attention over all of it (a head locked on the most recent copy scores as well; the
  statistic is in what it reads, not in a single copy).
- ``ngram_head`` (probe ``markov_chain_order2``, order 2, n = 3): an n-gram head attends to the tokens
  that followed earlier occurrences of the last n-1 tokens (the paper's "higher-order induction heads"
  computing input-conditional next-token distributions). Score: the same renormalised template score
  with P[i, j] = (tok_{i-1}, tok_i) == (tok_{j-2}, tok_{j-1}), j - 1 < i. A plain (bigram) induction
  head scores about 1 / n_states here (the share of bigram matches that are also trigram matches).

Causal check for both: mean-ablating the top-k heads should raise the next-token loss on the second half
of the chains more than ablating k random heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headmine.capture.records import CaptureRecord
from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores,
    CausalCheckSpec,
    Detector,
    induction_template,
    register,
    template_score,
)
from headmine.detectors.target_mass import ngram_template

NGRAM_N = 3


def statistical_induction_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Share of (non-first-token) attention on tokens that followed earlier copies of the current token."""
    return template_score(record, induction_template(record.input_ids), meta, exclude_bos=True,
                          detector="statistical_induction")


def ngram_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Share of (non-first-token) attention on tokens that followed earlier copies of the last n-1 tokens."""
    return template_score(record, ngram_template(record.input_ids, NGRAM_N), meta, exclude_bos=True,
                          detector="ngram_head")


STATISTICAL_INDUCTION = register(Detector(
    name="statistical_induction", head_type="Statistical Induction Head", task="markov_chain",
    sites=frozenset({Site.PATTERN}), causal=CausalCheckSpec(task="markov_chain"),
    score=statistical_induction_score, threshold=0.4,
    definition="attention share on tokens that followed earlier copies of the current token, on in-context "
               "Markov chains (in-context bigram statistics; Edelman et al. 2024)",
))
NGRAM = register(Detector(
    name="ngram_head", head_type="N-gram Head", task="markov_chain_order2",
    sites=frozenset({Site.PATTERN}), causal=CausalCheckSpec(task="markov_chain_order2"),
    score=ngram_score, threshold=0.4,
    definition=f"attention share on tokens that followed earlier copies of the last {NGRAM_N - 1} tokens, on "
               "order-2 in-context Markov chains (Akyurek et al. 2024)",
))
