"""Sources of a throwaway third-party plugin package, written to disk by the plugin tests.

The package adds one extension of each kind through entry points only, with no change to headmine:
a detector, a probe task, a causal method and a model family. Kept as strings so the package
exists only in the test's temporary folder (never importable from the repository itself).
"""

PACKAGE = "hm_demo_plugin"

DETECTOR = '''
"""A diagonal-head detector: attention mass on the query's own position."""
import torch

from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores, CausalCheckSpec, Detector, empty_scores, n_layers_heads, query_positions, register, require_site,
)


def self_attention_score(record, meta, weights=None):
    patterns = require_site(record, Site.PATTERN, "demo_self_attention")
    n_layers, n_heads = n_layers_heads(record, meta)
    mask = record.attention_mask.cpu().bool()
    b = mask.shape[0]
    out = empty_scores(b, n_layers, n_heads)
    rows = torch.arange(b)[:, None]
    for layer, a in patterns.items():
        a = a.detach().cpu().float()  # [b, h, q, k]
        qpos = query_positions(record, a.shape[2])
        diag = a.gather(-1, qpos[:, None, :, None].expand(b, a.shape[1], -1, 1)).squeeze(-1)  # [b, h, q]
        real = mask[rows, qpos].float()[:, None]
        out[:, layer, record.heads[layer]] = ((diag * real).sum(-1) / real.sum(-1)).double()
    return BatchScores(out)


DETECTOR = register(Detector(
    name="demo_self_attention", head_type="diagonal head", task="demo_repeats", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="demo_repeats"), score=self_attention_score, threshold=0.0,
    definition="attention on the query's own position (demo plugin)",
))
'''

TASK = '''
"""A probe task: short repeated random tokens, with the built-in second-repeat loss as its evaluation."""
from headmine.tasks import CapturePlan, ProbeTask, get_probe, register_probe
from headmine.tasks.repeated_tokens import repeated_tokens

DEMO_REPEATS = register_probe(ProbeTask(
    name="demo_repeats", build=repeated_tokens, defaults={"n": 4, "seq_len": 20},
    plan=CapturePlan(query_rows="all"), evaluation=get_probe("repeated_tokens").evaluation,
))
'''

METHOD = '''
"""A causal method: scale each head's output by a factor, one head at a time."""
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from headmine.causal.engine import run_with_interventions
from headmine.causal.interventions import Scale
from headmine.causal.methods import CausalMethod, MethodConfig, register_method
from headmine.core.tables import head_matrix_frame


@dataclass(frozen=True, kw_only=True)
class HalveConfig(MethodConfig):
    factor: float = 0.5


@dataclass(frozen=True, kw_only=True)
class HalveResult:
    metric: str
    deltas: torch.Tensor
    n: int

    def frame(self) -> pd.DataFrame:
        return head_matrix_frame(self.deltas, method="demo_halve", metric=f"delta_{self.metric}", n=self.n)

    def head_matrix(self) -> np.ndarray:
        return self.deltas.numpy()

    def artifacts(self) -> dict:
        return {}


class Halve(CausalMethod[HalveConfig]):
    name = "demo_halve"
    run_kind = "ablation"
    config_cls = HalveConfig

    def run(self, lm, config, inputs):
        ids, mask, metric = inputs.clean_ids, inputs.clean_mask, inputs.metric
        base = metric(run_with_interventions(lm, ids, mask)).cpu()
        deltas = torch.zeros(lm.geometry.n_layers, lm.geometry.n_heads)
        for h in lm.geometry.heads():
            out = metric(run_with_interventions(lm, ids, mask, [Scale(heads=(h,), factor=config.factor)])).cpu()
            deltas[h.layer, h.head] = (out - base).mean()
        return HalveResult(metric=metric.kind, deltas=deltas, n=int(base.shape[0]))


register_method(Halve())
'''

MODEL = '''
"""A model family that is a Llama under another name (a plugin adapter)."""
from headmine.models.llama import LlamaAdapter
from headmine.models.base import register_adapter


@register_adapter
class DemoLlamaAdapter(LlamaAdapter):
    families = ("demo_llama",)
'''

ENTRY_POINTS = """
[headmine.detectors]
demo_self_attention = hm_demo_plugin.detector

[headmine.tasks]
demo_repeats = hm_demo_plugin.task

[headmine.methods]
demo_halve = hm_demo_plugin.method

[headmine.models]
demo_llama = hm_demo_plugin.model
"""
