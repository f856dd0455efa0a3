"""Subject-verb agreement (causal task ``agreement``): "The keys to the cabinet" -> " are", corrupted
by flipping the subject's number."""

from __future__ import annotations

from typing import Any

from headmine.core.errors import TaskError
from headmine.tasks.base import check_n, encode_prompt, is_single_token, rng, single_token_id
from headmine.tasks.prompt_set import PromptItem, PromptSet
from headmine.tasks.registry import TASKS

AGREEMENT_NOUNS: tuple[tuple[str, str], ...] = (
    ("key", "keys"), ("dog", "dogs"), ("author", "authors"), ("teacher", "teachers"), ("car", "cars"),
    ("book", "books"), ("house", "houses"), ("girl", "girls"), ("boy", "boys"), ("bird", "birds"),
    ("window", "windows"), ("student", "students"), ("doctor", "doctors"), ("painting", "paintings"),
    ("tree", "trees"), ("road", "roads"), ("child", "children"), ("man", "men"), ("woman", "women"),
    ("friend", "friends"), ("farmer", "farmers"), ("letter", "letters"), ("picture", "pictures"),
)
AGREEMENT_ATTRACTORS: tuple[tuple[str, str], ...] = (
    ("cabinet", "cabinets"), ("table", "tables"), ("door", "doors"), ("garden", "gardens"),
    ("building", "buildings"), ("river", "rivers"), ("chair", "chairs"), ("wall", "walls"),
    ("school", "schools"), ("hill", "hills"), ("lake", "lakes"), ("village", "villages"),
)
AGREEMENT_PREPOSITIONS = ("to", "near", "behind", "next to", "of", "beside", "by", "across from")
AGREEMENT_VERBS: tuple[tuple[str, str], ...] = ((" is", " are"), (" was", " were"), (" has", " have"))


@TASKS.register("agreement")
def agreement(
    tokenizer: Any,
    *,
    n: int = 64,
    seed: int = 0,
    attractor: bool = True,
    prepend_bos: bool = False,
) -> PromptSet:
    """Subject-verb agreement: "The keys to the cabinet" -> " are" (vs " is"). Metric logit_diff
    (correct verb - wrong verb). Corrupted = the subject's number flipped ("The key to the
    cabinet"); both forms are single tokens, so lengths are equal. The answers stay those of the
    clean prompt (so the corrupted logit_diff is negative for a model that agrees).

    Meta: ``subject_pos``, ``attractor_pos`` [B] (-1 without attractor), ``subject_plural``,
    ``attractor_plural`` [B] bool; corrupted: the same with ``subject_plural`` flipped.
    """
    check_n(n)
    nouns = [p for p in AGREEMENT_NOUNS if all(is_single_token(tokenizer, " " + w) for w in p)]
    attrs = [p for p in AGREEMENT_ATTRACTORS if all(is_single_token(tokenizer, " " + w) for w in p)]
    verbs = [p for p in AGREEMENT_VERBS if all(is_single_token(tokenizer, w) for w in p)]
    if len(nouns) < 2 or not verbs or (attractor and not attrs):
        raise TaskError("too few agreement nouns or verbs are single tokens in this tokenizer")
    r = rng(seed)
    items = []
    for i in range(n):
        noun = r.choice(nouns)
        plural = i % 2 == 1
        sing_v, plur_v = r.choice(verbs)
        att, att_plural, prep = (r.choice(attrs), r.random() < 0.5, r.choice(AGREEMENT_PREPOSITIONS)) if attractor \
            else (None, False, None)

        def parts(pl: bool, noun=noun, att=att, att_plural=att_plural, prep=prep) -> list[Any]:
            out: list[Any] = ["The", ("subject", " " + noun[int(pl)])]
            if att is not None:
                out += [f" {prep} the", ("attractor", " " + att[int(att_plural)])]
            return out

        text, ids, spans = encode_prompt(tokenizer, parts(plural), prepend_bos=prepend_bos)
        ctext, cids, _ = encode_prompt(tokenizer, parts(not plural), prepend_bos=prepend_bos)
        if len(cids) != len(ids) or spans["subject"][1] - spans["subject"][0] != 1:
            raise TaskError(f"agreement item {i}: {text!r} and {ctext!r} do not line up", "drop this noun")
        target, wrong = (plur_v, sing_v) if plural else (sing_v, plur_v)
        meta = {"subject_pos": spans["subject"][0],
                "attractor_pos": spans["attractor"][0] if att is not None else -1,
                "subject_plural": plural, "attractor_plural": bool(att_plural)}
        items.append(PromptItem(
            prompt=text, target=target, target_ids=(single_token_id(tokenizer, target),), ids=tuple(ids),
            corrupted_prompt=ctext, corrupted_ids=tuple(cids), wrong_target=wrong,
            wrong_id=single_token_id(tokenizer, wrong), meta=meta,
            corrupted_meta={**meta, "subject_plural": not plural},
        ))
    return PromptSet(task="agreement", items=tuple(items), metric="logit_diff", tokenizer=tokenizer,
                     equal_lengths=True, params={"n": n, "seed": seed, "attractor": attractor,
                                                 "prepend_bos": prepend_bos, "corruption": "flip_number"})
