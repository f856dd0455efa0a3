"""What a score's sign means: one convention for every table, map, tooltip and head page.

Every head-level series gets a :class:`Meaning`: the quantity it measures, its unit, what a positive
and a negative value say in words, and its *importance sign* ``s`` such that ``s * value`` is the
head's sign-aligned importance (positive: the head supports the behaviour; maps and correlations use
it). Ranks: effects on a task (``delta_``, ``dla_``, ``frac_``, unknown metrics) rank by
``|value|``, since a head that works against the answer matters as much as one that supports it;
scores and gates rank by their stated direction. Rank 1 is always the most important head.

The rules follow how the writers define their metrics (``causal.metrics.HeadEffects``: ``delta_<m>``
is the change of metric ``m`` under the intervention, ``frac_<m>`` that change as a share of the
clean - corrupted gap; DLA's ``dla_<m>`` is the head's direct contribution; scan detector scores
and CHG gates grow with the property they name).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

HIGHER_IS_BETTER = ("logit_diff", "logit", "answer_logprob", "prob")
"""Answer metrics where a larger value means the model does the task better."""

UNITS = {"logit_diff": "logits", "logit": "logits", "answer_logprob": "nats", "prob": "probability"}

CHG_WORDS = {
    "F": "facilitation F = G⁻ (the gate stays open even when the fit pushes gates shut)",
    "N": "interference N = 1 − G⁺ (the gate stays shut even when the fit pushes gates open)",
    "I": "irrelevance I = G⁺ · (1 − G⁻) (the gate goes wherever the fit pushes it)",
    "G": "gate value G (fit without a regulariser)",
    "G_plus": "gate value G⁺ (fit that pushes gates open)",
    "G_minus": "gate value G⁻ (fit that pushes gates shut)",
}

# (what the intervention does, in words) by method-name prefix, for delta_/frac_ metrics
_INTERVENTIONS = (
    ("ablation", "ablating the head", -1),
    ("patching_denoising", "patching in its clean activation", 1),
    ("patching", "patching in its corrupted activation", -1),
    ("path_patching", "patching its corrupted output along the path", -1),
    ("attribution", "patching in its corrupted activation (linear estimate)", -1),
)


@dataclass(frozen=True)
class Meaning:
    """How to read one series. ``sign``: +1/-1 importance sign, 0 when unknown (rank by |value|)."""

    quantity: str
    unit: str
    sign: int
    positive: str
    negative: str
    importance: str
    supports: str = ""  # what a positive importance says, without a number ("ablating the head lowers ...")
    by_abs: bool = False  # rank by |importance| (effects: a head that works against the answer matters too)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, value: float | None, digits: int = 3) -> str:
        """The sentence a table cell or tooltip shows for ``value`` (e.g. 'ablating the head lowers ...')."""
        if value is None or not math.isfinite(value):
            return "not measured"
        text = self.positive if value >= 0 else self.negative
        return text.replace("{x}", f"{abs(value):.{digits}g}")


def quantity_for(metric_kind: str, task: str | None) -> str:
    """'the IO − S logit difference' for logit_diff on IOI, and plain names for the other metrics."""
    if metric_kind == "logit_diff":
        return "the IO − S logit difference" if task == "ioi" else "the answer − distractor logit difference"
    return {"logit": "the answer logit", "answer_logprob": "the answer log-probability",
            "prob": "the answer probability"}.get(metric_kind, metric_kind.replace("_", " "))


def _base_metric(metric: str) -> tuple[str, str]:
    """(prefix, metric kind) of ``delta_logit_diff@pos3`` -> ('delta_', 'logit_diff')."""
    name = metric.split("@", 1)[0]
    for prefix in ("delta_", "frac_", "dla_"):
        if name.startswith(prefix):
            return prefix, name[len(prefix):]
    return "", name


def meaning_for(kind: str, task: str | None, method: str, metric: str, *, definition: str | None = None) -> Meaning:
    """The :class:`Meaning` of one series (``definition``: a detector's own one-line definition)."""
    prefix, base = _base_metric(metric)
    if metric.startswith("kl_"):
        return Meaning(quantity=f"KL divergence of the output ({metric[3:].replace('_', ' ')})", unit="nats", sign=1,
                       positive="KL {x} nats (higher = the output depends more on this head)", negative="KL −{x} nats",
                       importance="higher KL ranks first (a head whose change moves the output most)",
                       supports="a larger change of the output")
    if metric == "score" or (kind == "scan" and metric.startswith("score")):
        what = definition or f"{method.replace('_', ' ')} score"
        return Meaning(quantity=what, unit="score", sign=1, positive="score {x} (higher = more of the pattern)",
                       negative="score −{x} (below zero)", importance="higher score ranks first",
                       supports="a higher score: more of the pattern")
    if kind.startswith("chg") and metric in CHG_WORDS:
        what = CHG_WORDS[metric]
        return Meaning(quantity=what, unit="gate (0–1)", sign=1, positive=f"{metric} = {{x}}",
                       negative=f"{metric} = −{{x}}", importance=f"higher {metric} ranks first", supports=f"higher {metric}")
    if base in HIGHER_IS_BETTER and prefix in ("delta_", "frac_", "dla_"):
        q, unit = quantity_for(base, task), UNITS.get(base, "")
        if prefix == "dla_":
            return Meaning(quantity=f"direct effect on {q}", unit=unit, sign=1,
                           positive=f"its direct output raises {q} by {{x}} {unit}",
                           negative=f"its direct output lowers {q} by {{x}} {unit}",
                           importance="ranked by |effect|: a positive value supports the answer, a negative one works against it",
                           supports=f"its direct output raises {q}", by_abs=True)
        act, sign = next(((words, s) for p, words, s in _INTERVENTIONS if method.startswith(p)), (None, 0))
        if prefix == "frac_":
            # frac = delta / (reference - baseline): positive when the patch moves the metric the
            # whole way toward the other run, whatever the direction
            return Meaning(quantity=f"share of the clean − corrupted gap in {q}", unit="share", sign=1,
                           positive=f"{act or 'the intervention'} moves {q} {{x}} of the way to the other run",
                           negative=f"{act or 'the intervention'} moves {q} {{x}} of the way away from the other run",
                           importance="ranked by |share|", supports=f"{act or 'the intervention'} closes more of the gap",
                           by_abs=True)
        act = act or f"the {method} intervention"
        if sign == 0:
            return Meaning(quantity=f"change in {q}", unit=unit, sign=0, positive=f"{act} raises {q} by {{x}} {unit}",
                           negative=f"{act} lowers {q} by {{x}} {unit}", importance="ranked by |change| (direction unknown)",
                           by_abs=True)
        helps = "lowers" if sign < 0 else "raises"
        return Meaning(quantity=f"change in {q}", unit=unit, sign=sign,
                       positive=f"{act} raises {q} by {{x}} {unit}", negative=f"{act} lowers {q} by {{x}} {unit}",
                       importance=f"ranked by |change|: {act} {helps} it for a head that supports the answer",
                       supports=f"{act} {helps} {q}", by_abs=True)
    what = f"{method} · {metric}"
    return Meaning(quantity=what, unit="", sign=0, positive="{x}", negative="−{x}",
                   importance="ranked by |value| (the writer states no direction)", by_abs=True)


def importance(values: Any, sign: int) -> Any:
    """``sign * values`` (sign-aligned: positive supports the behaviour), or ``|values|`` when the sign
    is unknown (0)."""
    return abs(values) if sign == 0 else sign * values


def rank_key(values: Any, sign: int, by_abs: bool) -> Any:
    """What ranks heads: ``|values|`` for effects (a head matters whichever way it pushes), else the
    sign-aligned value."""
    return abs(values) if by_abs else importance(values, sign)
