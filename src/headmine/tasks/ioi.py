"""Indirect object identification (Wang et al. 2022): ABBA/BABA templates, ABC corruptions; the
causal task ``ioi`` and the probe task ``ioi`` (its clean batch).

"When Mary and John went to the store, John gave a drink to" -> " Mary" (IO) rather than " John" (S).
"""

from __future__ import annotations

from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, check_n, encode_prompt, is_single_token, rng, single_token_id
from headmine.tasks.probe import CapturePlan, EvalBatch, Evaluation, ProbeTask
from headmine.tasks.prompt_set import PromptItem, PromptSet
from headmine.tasks.registry import TASKS, register_probe

# [X] and [Y] open the sentence; [S] is the second mention of the subject; the answer (IO) follows.
# ABBA: X = IO, Y = S. BABA: X = S, Y = IO. (Templates after the IOI paper's BABA set.)
IOI_TEMPLATES: tuple[str, ...] = (
    "Then, [X] and [Y] went to the [PLACE]. [S] gave a [OBJECT] to",
    "Then, [X] and [Y] had a lot of fun at the [PLACE]. [S] gave a [OBJECT] to",
    "Then, [X] and [Y] were working at the [PLACE]. [S] decided to give a [OBJECT] to",
    "Then, [X] and [Y] were thinking about going to the [PLACE]. [S] wanted to give a [OBJECT] to",
    "Then, [X] and [Y] had a long argument, and afterwards [S] said to",
    "After [X] and [Y] went to the [PLACE], [S] gave a [OBJECT] to",
    "When [X] and [Y] got a [OBJECT] at the [PLACE], [S] decided to give it to",
    "When [X] and [Y] got a [OBJECT] at the [PLACE], [S] decided to give the [OBJECT] to",
    "While [X] and [Y] were working at the [PLACE], [S] gave a [OBJECT] to",
    "While [X] and [Y] were commuting to the [PLACE], [S] gave a [OBJECT] to",
    "After the lunch, [X] and [Y] went to the [PLACE]. [S] gave a [OBJECT] to",
    "Afterwards, [X] and [Y] went to the [PLACE]. [S] gave a [OBJECT] to",
    "The [PLACE] [X] and [Y] went to had a [OBJECT]. [S] gave it to",
    "Friends [X] and [Y] found a [OBJECT] at the [PLACE]. [S] gave it to",
)

IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Michael", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel",
    "David", "James", "Robert", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah",
    "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Anthony", "Heather", "Eric", "Elizabeth",
    "Adam", "Megan", "Kevin", "Steven", "Thomas", "Timothy", "Kyle", "Rachel", "Laura", "Lauren", "Amber",
    "Richard", "Amy", "Michelle", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca",
    "Jacob", "Patrick", "Sean", "Kelly", "Nathan", "Sara", "Paul", "Angela", "Tyler", "Scott", "Andrea",
    "Lisa", "Alexander", "Jesse", "Katie", "Alice", "Bob", "Emma", "Henry", "Lucy", "Peter", "Anna",
)
IOI_PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
IOI_OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")


def ioi_names(tokenizer: Any, names: tuple[str, ...] = IOI_NAMES) -> list[str]:
    """The names that are one token with a leading space (" Mary") in this tokenizer."""
    return [n for n in names if is_single_token(tokenizer, " " + n)]


def _render(template: str, x: str, y: str, s: str, place: str, obj: str) -> list[Any]:
    """Split a template into encode_marked parts; the names (with their leading space) are
    labelled X, Y and S."""
    parts: list[Any] = []
    rest = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
    for tag, name in (("[X]", x), ("[Y]", y), ("[S]", s)):
        head, rest = rest.split(tag, 1)
        parts += [head.rstrip(" "), (tag.strip("[]"), " " + name)]
    parts.append(rest)
    return parts


@TASKS.register("ioi")
def ioi(
    tokenizer: Any,
    *,
    n: int = 64,
    seed: int = 0,
    order: str = "mixed",
    templates: tuple[int, ...] | None = None,
    prepend_bos: bool = False,
) -> PromptSet:
    """IOI prompts (metric logit_diff = logit(IO) - logit(S) at END) with ABC corruptions.

    ``order``: "ABBA", "BABA" or "mixed" (alternating). ``templates``: indices into IOI_TEMPLATES
    (default all). The corrupted prompt keeps the template, place and object and replaces the three
    name slots by three other names (p_ABC); names are single tokens, so lengths are equal (checked).

    Meta (clean and corrupted, positions identical): ``IO``, ``S1``, ``S2``, ``END`` [B] token
    positions (IO and S1 are the two names of the first clause, S2 the repeated subject, END the last
    prompt token); ``io_id``, ``s_id`` [B]; ``template`` [B] index; ``order`` list[str].
    Corrupted batches carry ``corrupted_names`` (the three names used) instead of ``order``.
    """
    check_n(n)
    if order not in ("ABBA", "BABA", "mixed"):
        raise TaskError(f"unknown IOI order {order!r}", 'use "ABBA", "BABA" or "mixed"')
    names = ioi_names(tokenizer)
    if len(names) < 5:
        raise TaskError(
            f"only {len(names)} IOI names are single tokens with a leading space in this tokenizer",
            "IOI needs at least 5 (IO, S and three ABC names)",
        )
    chosen = list(range(len(IOI_TEMPLATES))) if templates is None else list(templates)
    for t in chosen:
        if not 0 <= t < len(IOI_TEMPLATES):
            raise TaskError(f"IOI template index {t} is out of range", f"use 0..{len(IOI_TEMPLATES) - 1}")
    r = rng(seed)
    items = []
    for i in range(n):
        t = chosen[r.randrange(len(chosen))]
        tmpl = IOI_TEMPLATES[t]
        io, s, c1, c2, c3 = r.sample(names, 5)
        place, obj = r.choice(IOI_PLACES), r.choice(IOI_OBJECTS)
        o = order if order != "mixed" else ("ABBA" if i % 2 == 0 else "BABA")
        x, y = (io, s) if o == "ABBA" else (s, io)
        text, ids, spans = encode_prompt(tokenizer, _render(tmpl, x, y, s, place, obj), prepend_bos=prepend_bos)
        ctext, cids, cspans = encode_prompt(
            tokenizer, _render(tmpl, c1, c2, c3, place, obj), prepend_bos=prepend_bos
        )
        io_id, s_id = single_token_id(tokenizer, " " + io), single_token_id(tokenizer, " " + s)
        pos = {"X": spans["X"][0], "Y": spans["Y"][0], "S": spans["S"][0]}
        name_ids = {io: io_id, s: s_id}
        for tag, name in (("X", x), ("Y", y), ("S", s)):
            a, b = spans[tag]
            if b - a != 1 or ids[a] != name_ids[name]:
                raise TaskError(f"IOI name {name!r} is not one token inside {text!r}", "drop this name or template")
        meta = {
            "IO": pos["X"] if o == "ABBA" else pos["Y"],
            "S1": pos["Y"] if o == "ABBA" else pos["X"],
            "S2": pos["S"],
            "END": len(ids) - 1,
            "io_id": io_id,
            "s_id": s_id,
            "template": t,
            "order": o,
        }
        cmeta = {k: v for k, v in meta.items() if k != "order"}
        cmeta["corrupted_names"] = (c1, c2, c3)
        if len(cids) != len(ids) or any(cspans[k] != spans[k] for k in ("X", "Y", "S")):
            raise TaskError(
                f"IOI item {i}: the ABC prompt {ctext!r} does not line up with {text!r}",
                "use names that are single tokens in this tokenizer",
            )
        items.append(
            PromptItem(
                prompt=text, target=" " + io, target_ids=(io_id,), ids=tuple(ids),
                corrupted_prompt=ctext, corrupted_ids=tuple(cids),
                wrong_target=" " + s, wrong_id=s_id, meta=meta, corrupted_meta=cmeta,
            )
        )
    return PromptSet(
        task="ioi", items=tuple(items), metric="logit_diff", tokenizer=tokenizer, equal_lengths=True,
        params={"n": n, "seed": seed, "order": order, "templates": chosen, "prepend_bos": prepend_bos,
                "corruption": "ABC", "n_names": len(names)},
    )


def ioi_probe(tokenizer: Any, *, n: int = 64, seed: int = 0, **params: Any) -> TokenBatch:
    """The clean IOI batch (meta as in ``ioi``), for attention-signature detectors."""
    return ioi(tokenizer, n=n, seed=seed, **params).clean_batch()


def minus_logit_diff(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Minus the mean logit difference logit(IO) - logit(S) at END (higher = worse)."""
    batch = ioi_probe(tokenizer, n=n, seed=seed, **params)
    end = torch.as_tensor(batch.meta["END"]).long()
    io = torch.as_tensor(batch.meta["io_id"]).long()
    s = torch.as_tensor(batch.meta["s_id"]).long()
    rows = torch.arange(len(batch))

    def measure(logits: torch.Tensor) -> float:
        last = logits[rows, end].float()
        return float(-(last[rows, io] - last[rows, s]).mean())

    return EvalBatch(batch=batch, measure=measure)


#: the scan captures only the END query row of each prompt (where the answer is predicted)
PROBE = register_probe(ProbeTask(
    name="ioi", build=ioi_probe, defaults={"n": 32}, plan=CapturePlan(query_rows="END"),
    evaluation=Evaluation(metric="minus_logit_diff", build=minus_logit_diff),
))
