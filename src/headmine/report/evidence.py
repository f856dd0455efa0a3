"""Confirmed roles versus evidence: what the report may call a head, and what it may only show.

A head's *role* is a head type whose causal check passed for a set of heads that includes it (the
scan's ``causal`` artifact: ablating a detector's top-k heads against k random heads) and whose
detector labelled it. Its headline role is the confirmed type with the largest margin over the
random heads, in random-draw standard deviations. Every other label (a check that failed, a
detector without a check, a labelled head outside the tested top-k, a CHG fit that has not
converged) is *evidence*: shown, and marked as such, never used as a title or counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from headmine.atlas.artifacts import finite

CHECK_FAILED = "causal check failed"
NOT_TESTED = "no causal check"
OUTSIDE_TOPK = "outside the tested top-k"
CHG_UNCONVERGED = "CHG fit not converged"
CHG_UNKNOWN = "CHG convergence not recorded"

_CHECK_METRICS = {
    "loss_text": "the loss on natural text",
    "loss_second_repeat": "the loss on the second repeat",
    "loss_answer": "the loss on the needle's answer",
    "loss_successor": "the loss on the successor token",
}


def check_metric_words(metric: str) -> tuple[str, int]:
    """(words, flip) for a check's metric: a ``minus_<m>`` metric is named as ``<m>`` with its
    direction flipped (flip = -1), so a sentence reads 'lowers the logit difference', never 'raises
    minus the logit difference'."""
    if metric.startswith("minus_") and metric != "minus_":
        rest = metric[len("minus_"):]
        return ("the IO − S logit difference" if rest == "logit_diff" else rest.replace("_", " ")), -1
    return _CHECK_METRICS.get(metric, metric.replace("_", " ")), 1


def _verb(x: float) -> str:
    return "raises" if x >= 0 else "lowers"


def describe_check(row: Mapping[str, Any]) -> dict[str, Any]:
    """A causal check row with its expected sign, pass rule, margin and sentences added."""
    s = int(row.get("expected_sign", 1) or 0)
    m, flip = check_metric_words(str(row.get("metric", "")))
    k = row.get("k") or len(row.get("heads") or [])
    top, mean, sd = row.get("topk_effect"), row.get("random_mean"), row.get("random_std")
    rand = list(row.get("random_effects") or [])
    rule = row.get("extra", {}).get("rule")
    if rule is None:
        if s == 0:
            rule = "confirmed when ablating the heads changes the output less than random heads do (no harm expected)"
        else:
            want = "raises" if s * flip > 0 else "lowers"
            why = "hurts" if s > 0 else "helps: the type works against the answer"
            rule = (f"confirmed when ablating the top-{k} {want} {m} ({why}) by more than every one of the "
                    f"{len(rand) or 'random'} random draws of {k} heads and by more than their mean + 2 sd")
    margin = margin_z = None
    if s != 0 and top is not None and mean is not None:
        margin = s * (top - mean)
        if sd is not None and sd > 0 and math.isfinite(sd):
            margin_z = margin / sd
    effect = "–" if top is None else f"ablating the top-{k} {_verb(flip * top)} {m} by {abs(top):.3g}"
    rand_txt = "–" if mean is None else (f"{flip * mean:+.3g}" + (f" ± {sd:.3g}" if sd is not None else "")
                                        + (f" (max {max(flip * r for r in rand):+.3g})" if flip > 0 and rand else
                                           f" (min {min(flip * r for r in rand):+.3g})" if rand else ""))
    expect = ("change nothing" if s == 0 else
              f"{'raise' if s * flip > 0 else 'lower'} it ({'hurt' if s > 0 else 'help'})")
    confirmed = row.get("confirmed")
    verdict = "confirmed" if confirmed is True else "failed" if confirmed is False else "no verdict"
    return {**row, "expected_sign": s, "metric_words": m, "rule": rule, "expect": expect, "effect_text": effect,
            "effect": finite(None if top is None else flip * top, 3), "k": k,
            "random_text": rand_txt, "margin": finite(margin), "margin_z": finite(margin_z, 3), "verdict": verdict}


def _priority(item: Mapping[str, Any]) -> tuple[float, float]:
    z, raw = item.get("margin_z"), item.get("margin")
    return (z if z is not None else -1e9, raw if raw is not None else -1e9)


def head_evidence(labels: Mapping[str, list[dict[str, Any]]], checks: list[dict[str, Any]],
                  chg_converged: Mapping[int, bool | None]) -> dict[str, dict[str, Any]]:
    """Per head: ``confirmed`` roles (best first), ``evidence`` (other labels, each with its status)
    and ``headline`` (the best confirmed role, or None).

    ``checks``: :func:`describe_check` rows; ``chg_converged``: CHG run id -> its stored verdict
    (None when the run recorded none).
    """
    by_detector = {c["detector"]: c for c in checks}
    out: dict[str, dict[str, Any]] = {}
    for hid, items in labels.items():
        confirmed: list[dict[str, Any]] = []
        evidence: list[dict[str, Any]] = []
        for d in items:
            chk = by_detector.get(d["method"]) if d["kind"] == "scan" else None
            item = {**d}
            if d["kind"].startswith("chg"):
                conv = chg_converged.get(d["run"])
                # CHG labels are gate classes, not survey types: never a headline role, and marked
                # as evidence unless the fit recorded that it converged
                item["status"] = "CHG fit converged" if conv else CHG_UNCONVERGED if conv is False else CHG_UNKNOWN
                evidence.append(item)
                continue
            if chk is None:
                item["status"] = NOT_TESTED
            elif chk["verdict"] != "confirmed":
                item["status"] = CHECK_FAILED if chk["verdict"] == "failed" else NOT_TESTED
            elif hid not in chk["heads"]:
                item["status"] = OUTSIDE_TOPK
            else:
                item.update(status="confirmed", margin=chk["margin"], margin_z=chk["margin_z"], check=chk["detector"])
                confirmed.append(item)
                continue
            evidence.append(item)
        confirmed.sort(key=_priority, reverse=True)
        seen: set[str] = set()
        roles = [c for c in confirmed if not (c["head_type"] in seen or seen.add(c["head_type"]))]
        out[hid] = {"confirmed": roles, "evidence": evidence, "headline": roles[0] if roles else None}
    return out


def role_map(evidence: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The role-map cell of each head with a label: its headline role (``status`` confirmed) or, when it
    has none, its strongest evidence (``status`` evidence, drawn as a mark, never as a role)."""
    roles = {}
    for hid, ev in evidence.items():
        head = ev["headline"]
        status = "confirmed"
        if head is None:
            survey = [e for e in ev["evidence"] if not e["kind"].startswith("chg")]
            if not survey:
                continue
            head, status = survey[0], "evidence"
        name = head["head_type"]
        short = name[:-5] if name.endswith(" Head") else name
        others = [c["head_type"] for c in ev["confirmed"][1:4]]
        roles[hid] = {
            "head_type": name,
            "short": short if len(short) <= 14 else short[:13] + "…",
            "stage": head.get("stage"),
            "stage_code": head.get("stage_code") or "",
            "status": status,
            "why": head.get("status", "confirmed"),
            "margin_z": head.get("margin_z"),
            "others": others,
            "evidence": sorted({e["head_type"] for e in ev["evidence"] if not e["kind"].startswith("chg")}),
        }
    return roles
