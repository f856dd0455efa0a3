"""Factual recall (causal task ``factual``): relations of (subject, answer) pairs, built-in or read
from a file, zero-shot or few-shot prompts, subject-swap corruptions."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from headmine.core.errors import InputError, TaskError
from headmine.tasks.base import check_metric, check_n, encode_prompt, is_single_token, rng, single_token_id
from headmine.tasks.prompt_set import PromptItem, PromptSet
from headmine.tasks.registry import TASKS


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
    subjects: Mapping[str, Collection[str]] | None = None,
) -> PromptSet:
    """Factual recall prompts, cycling over ``relations`` (built-in names or relation-file paths;
    default all built-ins), zero-shot or with ``shots`` solved examples of the same relation
    prepended ("The capital of Japan is Tokyo.\\n..."). ``template`` (with ``{subject}``) overrides
    the template of relation files (built-ins keep theirs). ``subjects`` (relation name -> subjects)
    keeps only those facts of a relation: its queries, demonstrations and corruption partners all
    come from them (one split of the facts, so no other fact appears in these prompts).

    Corrupted = the subject replaced by another subject of the same relation with a different
    answer; with ``require_equal_length`` only swaps giving the same token length are used
    (subjects with no such partner are skipped; counted in params["skipped"]). ``wrong_target``
    is the corrupting subject's answer, so metric "logit_diff" is available too.

    Meta: ``subject_span`` [B, 2], ``subject_last`` [B] (last subject token), ``relation`` list,
    ``subject`` list, ``shots`` [B]; corrupted: the same keys for the corrupted prompt.
    """
    check_n(n)
    check_metric(metric)
    names = list(BUILTIN_RELATIONS) if relations is None else ([relations] if isinstance(relations, str) else relations)
    rels = [
        builtin_relation(r, tokenizer) if r in BUILTIN_RELATIONS else load_relation(r, tokenizer, template=template, strict=True)
        for r in names
    ]
    if subjects is not None:
        rels = [rel if rel.name not in subjects else
                replace(rel, pairs=tuple(p for p in rel.pairs if p[0] in set(subjects[rel.name]))) for rel in rels]
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
