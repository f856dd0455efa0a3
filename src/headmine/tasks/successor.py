"""Successor (causal task ``successor``): consecutive comma-separated ordinal tokens -> the next
one, corrupted by shuffling the items."""

from __future__ import annotations

from typing import Any

from headmine.core.errors import TaskError
from headmine.tasks.base import check_n, encode_prompt, rng
from headmine.tasks.ordinal import ordinal_sets
from headmine.tasks.prompt_set import PromptItem, PromptSet
from headmine.tasks.registry import TASKS


@TASKS.register("successor")
def successor(
    tokenizer: Any,
    *,
    n: int = 64,
    seed: int = 0,
    length: int = 3,
    sets: list[str] | None = None,
    prepend_bos: bool = False,
) -> PromptSet:
    """``length`` consecutive ordinal tokens -> the next one (" Monday, Tuesday, Wednesday," ->
    " Thursday"; bare-form sets: "1,2,3," -> "4"; only single known tokens, see ``ordinal_sets``).
    Corrupted = the same items in a shuffled (non-increasing) order, same token length. Metric
    answer_logprob (the answer position only).

    Meta: ``set_name`` list, ``item_positions`` [B, length], ``start`` [B] (index in the set).
    """
    check_n(n)
    if length < 2:
        raise TaskError(f"length={length}: a successor prompt needs at least 2 items")
    chosen = {k: v for k, v in ordinal_sets(tokenizer, names=sets).items() if len(v.ids) > length}
    if not chosen:
        raise TaskError(f"no ordinal set has more than {length} single-token items", "lower length")
    names = sorted(chosen)
    r = rng(seed)
    items = []
    for i in range(n):
        s = chosen[names[i % len(names)]]
        start = r.randrange(0, len(s.ids) - length)
        idx = list(range(start, start + length))
        shuffled = idx[:]
        while shuffled == idx:
            r.shuffle(shuffled)
        text, ids, spans = encode_prompt(tokenizer, s.render(idx), prepend_bos=prepend_bos)
        ctext, cids, cspans = encode_prompt(tokenizer, s.render(shuffled), prepend_bos=prepend_bos)
        pos = [spans[f"item{k}"][0] for k in range(length)]
        for k, item in enumerate(idx):
            a, b = spans[f"item{k}"]
            if b - a != 1 or ids[a] != s.ids[item]:
                raise TaskError(f"ordinal {s.words[item]!r} does not stay one token inside {text!r}",
                                f"exclude the set {s.name!r}")
        target = s.words[start + length]
        items.append(PromptItem(
            prompt=text, target=target, target_ids=(s.ids[start + length],), ids=tuple(ids),
            corrupted_prompt=ctext, corrupted_ids=tuple(cids),
            meta={"set_name": s.name, "item_positions": tuple(pos), "start": start},
            corrupted_meta={"set_name": s.name, "item_positions": tuple(cspans[f"item{k}"][0] for k in range(length)),
                            "start": start},
        ))
    ps = PromptSet(task="successor", items=tuple(items), metric="answer_logprob", tokenizer=tokenizer,
                   equal_lengths=True, params={"n": n, "seed": seed, "length": length, "sets": names,
                                               "prepend_bos": prepend_bos, "corruption": "shuffle"})
    ps.check_lengths()
    return ps
