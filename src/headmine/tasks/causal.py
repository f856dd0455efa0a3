"""Causal task datasets (clean + corrupted prompts and a metric): factual recall, successor,
arithmetic, subject-verb agreement and induction. IOI lives in ``ioi.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from headmine.core.errors import InputError, TaskError
from headmine.tasks.base import (
    METRICS,
    TASKS,
    PromptItem,
    PromptSet,
    check_n,
    encode_prompt,
    is_single_token,
    rng,
    single_token_id,
    torch_rng,
)
from headmine.tasks.probes import _bos_prefix, ordinal_sets, token_pool


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise TaskError(f"unknown metric {metric!r}", f"use one of {METRICS}")
    return metric


# --------------------------------------------------------------------------- factual recall
@dataclass(frozen=True)
class Relation:
    """A factual relation: (subject, answer) pairs and a prompt template with ``{subject}``.

    The target of a pair is ``" " + answer`` (the answer follows a word). ``dropped`` lists pairs
    removed because the answer is not one token: (line number, subject, answer).
    """

    name: str
    template: str
    pairs: tuple[tuple[str, str], ...]
    dropped: tuple[tuple[int, str, str], ...] = ()


BUILTIN_RELATIONS = ("country_capital", "landmark_country", "country_language", "object_colour")


def load_relation(
    path: str | Path,
    tokenizer: Any = None,
    *,
    template: str | None = None,
    name: str | None = None,
    strict: bool = True,
) -> Relation:
    """Read a relation file.

    Formats (chosen by suffix): ``.jsonl``/``.json`` lines ``{"subject": ..., "answer": ...}`` (a
    line ``{"template": "..."}`` sets the template);
    anything else is TSV lines ``subject<TAB>answer``. Lines starting with ``#`` are comments;
    ``# template: The capital of {subject} is`` and ``# relation: name`` set the template and name
    (``template``/``name`` arguments win). With a tokenizer, answers that are not one token (with a
    leading space) raise TaskError naming the line (``strict``) or are dropped.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(f"cannot read relation file {p}: {err}", "check the path") from err
    is_json = p.suffix in (".jsonl", ".json")
    pairs: list[tuple[str, str]] = []
    dropped: list[tuple[int, str, str]] = []
    file_template, file_name = None, None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            if key.strip() == "template":
                file_template = value.strip()
            elif key.strip() == "relation":
                file_name = value.strip()
            continue
        if is_json:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{p}:{lineno}: invalid JSON ({err.msg})", "one JSON object per line") from err
            if isinstance(rec, dict) and set(rec) == {"template"} and isinstance(rec["template"], str):
                file_template = rec["template"]
                continue
            if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("subject", "answer")):
                raise InputError(f"{p}:{lineno}: needs string fields 'subject' and 'answer'",
                                 'write lines like {"subject": "France", "answer": "Paris"}')
            subject, answer = rec["subject"].strip(), rec["answer"].strip()
        else:
            fields = raw.split("\t")
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                raise InputError(f"{p}:{lineno}: expected 'subject<TAB>answer', got {raw!r}",
                                 "separate subject and answer with one tab")
            subject, answer = fields[0].strip(), fields[1].strip()
        if tokenizer is not None and not is_single_token(tokenizer, " " + answer):
            if strict:
                pieces = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
                raise TaskError(
                    f"{p}:{lineno}: answer {answer!r} is {len(pieces)} tokens in this tokenizer, not one",
                    "use single-token answers, or strict=False to drop such lines",
                )
            dropped.append((lineno, subject, answer))
            continue
        pairs.append((subject, answer))
    if not pairs and dropped:
        raise TaskError(f"relation file {p} has no single-token answers in this tokenizer",
                        "use a model whose vocabulary has the answers as single tokens, or other relations")
    if not pairs:
        raise InputError(f"relation file {p} has no (subject, answer) lines", "add lines 'subject<TAB>answer'")
    tmpl = template or file_template
    if not tmpl or "{subject}" not in tmpl:
        raise InputError(f"relation file {p} has no template with {{subject}}",
                         "add a line '# template: The capital of {subject} is' or pass template=")
    return Relation(name or file_name or p.stem, tmpl, tuple(pairs), tuple(dropped))


def builtin_relation(name: str, tokenizer: Any = None, *, strict: bool = False) -> Relation:
    if name not in BUILTIN_RELATIONS:
        raise TaskError(f"unknown relation {name!r}", f"choose from {BUILTIN_RELATIONS} or pass a file path")
    ref = resources.files("headmine.tasks").joinpath(f"data/relations/{name}.tsv")
    with resources.as_file(ref) as path:
        return load_relation(path, tokenizer, strict=strict)


def _few_shot_prefix(rel: Relation, examples: list[tuple[str, str]]) -> str:
    return "".join(rel.template.format(subject=s) + " " + a + ".\n" for s, a in examples)


def _factual_parts(rel: Relation, prefix: str, subject: str) -> list[Any]:
    head, tail = rel.template.split("{subject}", 1)
    return [prefix + head, ("subject", subject), tail]


@TASKS.register("factual")
def factual(
    tokenizer: Any,
    *,
    n: int = 64,
    seed: int = 0,
    relations: list[str] | str | None = None,
    shots: int = 0,
    prepend_bos: bool = False,
    require_equal_length: bool = True,
    metric: str = "answer_logprob",
    template: str | None = None,
) -> PromptSet:
    """Factual recall prompts, cycling over ``relations`` (built-in names or relation-file paths;
    default all built-ins), zero-shot or with ``shots`` solved examples of the same relation
    prepended ("The capital of Japan is Tokyo.\\n..."). ``template`` (with ``{subject}``) overrides
    the template of relation files (built-ins keep theirs).

    Corrupted = the subject replaced by another subject of the same relation with a different
    answer; with ``require_equal_length`` only swaps giving the same token length are used
    (subjects with no such partner are skipped; counted in params["skipped"]). ``wrong_target``
    is the corrupting subject's answer, so metric "logit_diff" is available too.

    Meta: ``subject_span`` [B, 2], ``subject_last`` [B] (last subject token), ``relation`` list,
    ``subject`` list, ``shots`` [B]; corrupted: the same keys for the corrupted prompt.
    """
    check_n(n)
    _check_metric(metric)
    names = list(BUILTIN_RELATIONS) if relations is None else ([relations] if isinstance(relations, str) else relations)
    rels = [
        builtin_relation(r, tokenizer) if r in BUILTIN_RELATIONS else load_relation(r, tokenizer, template=template, strict=True)
        for r in names
    ]
    for rel in rels:
        if len({a for _, a in rel.pairs}) < 2 or len(rel.pairs) < shots + 2:
            raise TaskError(f"relation {rel.name!r} has too few usable pairs ({len(rel.pairs)}) for shots={shots}",
                            "add pairs or lower shots")
    r = rng(seed)
    items: list[PromptItem] = []
    skipped = 0
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise TaskError(f"could only build {len(items)} of {n} factual prompts with equal-length corruptions",
                            "pass require_equal_length=False, or add relation pairs")
        rel = rels[len(items) % len(rels)] if skipped == 0 else r.choice(rels)
        subject, answer = r.choice(rel.pairs)
        others = [p for p in rel.pairs if p[0] != subject]
        examples: list[tuple[str, str]] = []
        if shots:
            pool = [p for p in others if p[1] != answer]
            if len(pool) < shots + 1:
                pool = others
            examples = r.sample(pool, shots)
        prefix = _few_shot_prefix(rel, examples)
        text, ids, spans = encode_prompt(tokenizer, _factual_parts(rel, prefix, subject), prepend_bos=prepend_bos)
        used = {s for s, _ in examples}
        cands = [p for p in others if p[1] != answer and p[0] not in used]
        r.shuffle(cands)
        found = None
        fallback = None
        for cs, ca in cands:
            ctext, cids, cspans = encode_prompt(tokenizer, _factual_parts(rel, prefix, cs), prepend_bos=prepend_bos)
            if len(cids) == len(ids) and cspans["subject"] == spans["subject"]:
                found = (cs, ca, ctext, cids, cspans)
                break
            if fallback is None:
                fallback = (cs, ca, ctext, cids, cspans)
        if found is None:
            if require_equal_length or fallback is None:
                skipped += 1
                continue
            found = fallback
        cs, ca, ctext, cids, cspans = found
        tid, wid = single_token_id(tokenizer, " " + answer), single_token_id(tokenizer, " " + ca)
        a, b = spans["subject"]
        ca_, cb_ = cspans["subject"]
        items.append(PromptItem(
            prompt=text, target=" " + answer, target_ids=(tid,), ids=tuple(ids),
            corrupted_prompt=ctext, corrupted_ids=tuple(cids), wrong_target=" " + ca, wrong_id=wid,
            meta={"subject_span": (a, b), "subject_last": b - 1, "relation": rel.name, "subject": subject,
                  "shots": shots},
            corrupted_meta={"subject_span": (ca_, cb_), "subject_last": cb_ - 1, "relation": rel.name,
                            "subject": cs, "shots": shots},
        ))
    equal = all(len(it.ids) == len(it.corrupted_ids or ()) for it in items)
    return PromptSet(
        task="factual", items=tuple(items), metric=metric, tokenizer=tokenizer, equal_lengths=equal,
        params={"n": n, "seed": seed, "relations": [x.name for x in rels], "shots": shots,
                "prepend_bos": prepend_bos, "require_equal_length": require_equal_length, "skipped": skipped,
                "dropped_pairs": {x.name: len(x.dropped) for x in rels}, "corruption": "subject_swap"},
    )


# --------------------------------------------------------------------------- successor
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
    """``length`` consecutive ordinal tokens -> the next one (" Monday Tuesday Wednesday" ->
    " Thursday"; bare-form sets are comma separated: "1,2,3," -> "4"). Corrupted = the same items
    in a shuffled (non-increasing) order, same token length. Metric answer_logprob.

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


# --------------------------------------------------------------------------- arithmetic
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@TASKS.register("arithmetic")
def arithmetic(
    tokenizer: Any,
    *,
    n: int = 64,
    seed: int = 0,
    op: str = "+",
    max_operand: int = 99,
    template: str = "{a}{op}{b}=",
    prepend_bos: bool = False,
    metric: str = "logit_diff",
) -> PromptSet:
    """Two-operand problems "12+7=" -> "19", restricted to answers that are one token in this
    tokenizer (digit-splitting tokenizers such as SmolLM2's allow only 0..9). Corrupted = other
    operands with a different answer and the same token length; ``wrong_target`` is the corrupted
    answer (metric logit_diff = clean answer - corrupted answer).

    Meta: ``a``, ``b``, ``answer`` [B] (ints), ``a_span``, ``b_span`` [B, 2].
    """
    check_n(n)
    _check_metric(metric)
    if op not in _OPS:
        raise TaskError(f"unknown operator {op!r}", f"use one of {sorted(_OPS)}")
    if "{a}" not in template or "{b}" not in template:
        raise TaskError(f"arithmetic template {template!r} needs {{a}} and {{b}}")
    single = {}
    cands = []
    for a in range(max_operand + 1):
        for b in range(max_operand + 1):
            c = _OPS[op](a, b)
            if c < 0:
                continue
            if c not in single:
                single[c] = is_single_token(tokenizer, str(c))
            if single[c]:
                cands.append((a, b, c))
    if len({c for _, _, c in cands}) < 2:
        raise TaskError(f"fewer than two single-token answers for {op} with operands <= {max_operand}",
                        "raise max_operand or use another operator")

    def parts(a: int, b: int) -> list[Any]:
        ia, ib = template.index("{a}"), template.index("{b}")
        rest = template.replace("{op}", op)
        first, second = (("a", a), ("b", b)) if ia < ib else (("b", b), ("a", a))
        h, rest = rest.split("{" + first[0] + "}", 1)
        m, t = rest.split("{" + second[0] + "}", 1)
        return [h, (first[0], str(first[1])), m, (second[0], str(second[1])), t]

    r = rng(seed)
    items = []
    tries = 0
    while len(items) < n:
        tries += 1
        if tries > 100 * n:
            raise TaskError("could not find equal-length corruptions for arithmetic prompts", "change max_operand")
        a, b, c = r.choice(cands)
        text, ids, spans = encode_prompt(tokenizer, parts(a, b), prepend_bos=prepend_bos)
        for _ in range(50):
            a2, b2, c2 = r.choice(cands)
            if c2 == c:
                continue
            ctext, cids, cspans = encode_prompt(tokenizer, parts(a2, b2), prepend_bos=prepend_bos)
            if len(cids) == len(ids):
                break
        else:
            continue
        items.append(PromptItem(
            prompt=text, target=str(c), target_ids=(single_token_id(tokenizer, str(c)),), ids=tuple(ids),
            corrupted_prompt=ctext, corrupted_ids=tuple(cids), wrong_target=str(c2),
            wrong_id=single_token_id(tokenizer, str(c2)),
            meta={"a": a, "b": b, "answer": c, "a_span": spans["a"], "b_span": spans["b"]},
            corrupted_meta={"a": a2, "b": b2, "answer": c2, "a_span": cspans["a"], "b_span": cspans["b"]},
        ))
    return PromptSet(task="arithmetic", items=tuple(items), metric=metric, tokenizer=tokenizer, equal_lengths=True,
                     params={"n": n, "seed": seed, "op": op, "max_operand": max_operand, "template": template,
                             "prepend_bos": prepend_bos, "n_candidates": len(cands), "corruption": "operands"})


# --------------------------------------------------------------------------- subject-verb agreement
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


# --------------------------------------------------------------------------- induction
@TASKS.register("induction")
def induction(
    tokenizer: Any,
    *,
    n: int = 32,
    seed: int = 0,
    seq_len: int = 20,
    prefix_len: int | None = None,
    prepend_bos: bool = True,
    exclude_common: float = 0.0,
    exclude_rare: float = 0.0,
) -> PromptSet:
    """BOS + r + r[:m] -> r[m] (r = ``seq_len`` distinct random tokens, m = ``prefix_len``, default
    seq_len // 2). Corrupted = BOS + r + r'[:m] with r' fresh random tokens (not in r): the answer
    is then not predictable by induction. Metric answer_logprob.

    Meta: ``source_pos`` [B] (position of r[m] in the first copy: where an induction head at the
    last position should attend), ``prev_copy_pos`` [B] (position of r[m-1] in the first copy).
    """
    check_n(n)
    m = seq_len // 2 if prefix_len is None else prefix_len
    if not 1 <= m < seq_len:
        raise TaskError(f"prefix_len={m} must be in [1, seq_len)", "use 1 <= prefix_len < seq_len")
    pool = token_pool(tokenizer, exclude_common=exclude_common, exclude_rare=exclude_rare)
    if len(pool) < 2 * seq_len:
        raise TaskError(f"only {len(pool)} candidate tokens", "lower seq_len")
    g = torch_rng(seed)
    prefix = _bos_prefix(tokenizer, prepend_bos)
    off = len(prefix)
    items = []
    for _ in range(n):
        perm = pool[torch.randperm(len(pool), generator=g)[: 2 * seq_len]].tolist()
        rr, r2 = perm[:seq_len], perm[seq_len:]
        ids = prefix + rr + rr[:m]
        cids = prefix + rr + r2[:m]
        meta = {"source_pos": off + m, "prev_copy_pos": off + m - 1}
        items.append(PromptItem(
            prompt=tokenizer.decode(ids), target=tokenizer.decode([rr[m]]), target_ids=(rr[m],), ids=tuple(ids),
            corrupted_prompt=tokenizer.decode(cids), corrupted_ids=tuple(cids), meta=meta,
        ))
    return PromptSet(task="induction", items=tuple(items), metric="answer_logprob", tokenizer=tokenizer,
                     equal_lengths=True, params={"n": n, "seed": seed, "seq_len": seq_len, "prefix_len": m,
                                                 "prepend_bos": prepend_bos, "exclude_common": exclude_common,
                                                 "exclude_rare": exclude_rare, "corruption": "fresh_tokens"})
