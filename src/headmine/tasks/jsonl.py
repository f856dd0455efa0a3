"""User data: JSONL causal tasks and next-token (gating) datasets. (``load_task`` is in ``registry``.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from headmine.core.errors import InputError, TaskError
from headmine.tasks.base import METRICS, TokenBatch, bos_id, encode, pad_batch, pad_id
from headmine.tasks.prompt_set import PromptItem, PromptSet


def read_utf8(p: Path) -> str:
    """The text of a user's file; a missing file or one that is not UTF-8 is one clear error naming
    the place (the line and byte of the first bad byte), never a raw decode traceback."""
    try:
        data = p.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {p}: {err.strerror or err}", "check the path") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(f"{p}:{line}: the file is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
                         "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)") from None


def _read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    p = Path(path)
    lines = read_utf8(p).splitlines()
    out = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(f"{p}:{lineno}: invalid JSON ({err.msg} at column {err.colno})",
                             "write one JSON object per line") from err
        if not isinstance(rec, dict):
            raise InputError(f"{p}:{lineno}: expected a JSON object, got {type(rec).__name__}",
                             'write lines like {"prompt": "...", "target": "..."}')
        for key in required:
            if not isinstance(rec.get(key), str) or not rec[key]:
                raise InputError(f"{p}:{lineno}: missing or empty string field {key!r}",
                                 f"every line needs {', '.join(repr(k) for k in required)}")
        out.append((lineno, rec))
    if not out:
        raise InputError(f"{p} is empty (no JSON lines)", 'add lines like {"prompt": "...", "target": "..."}')
    return out


def _with_bos(ids: list[int], tokenizer: Any, prepend_bos: bool) -> list[int]:
    b = bos_id(tokenizer)
    if prepend_bos and b is not None and (not ids or ids[0] != b):
        return [b, *ids]
    return ids


def load_jsonl_task(
    path: str | Path,
    tokenizer: Any,
    *,
    n: int | None = None,
    seed: int = 0,
    require_single_token: bool = True,
    require_equal_length: bool = True,
    metric: str | None = None,
    prepend_bos: bool = False,
) -> PromptSet:
    """A causal task from JSONL lines ``{"prompt": ..., "target": ..., "corrupted_prompt": ...,
    "wrong_target": ...}`` (the last two optional). The target is used exactly as written (include
    the leading space: " Paris"). ``n`` keeps the first n lines; ``seed`` is unused (file order).

    Errors name the line: invalid JSON, missing prompt/target, a target (or wrong_target) that is
    several tokens when ``require_single_token``, and a corrupted prompt whose token length differs
    from the clean one when ``require_equal_length``. Metric: "logit_diff" when every line has a
    wrong_target, else "answer_logprob" (or as given).

    Meta: ``line`` [B] (1-based line number in the file).
    """
    p = Path(path)
    records = _read_jsonl(p, ("prompt", "target"))
    if n is not None:
        records = records[: int(n)]
    items = []
    for lineno, rec in records:
        target = rec["target"]
        tids = tuple(encode(tokenizer, target, add_special_tokens=False))
        if not tids:
            raise InputError(f"{p}:{lineno}: target {target!r} tokenises to nothing")
        if require_single_token and len(tids) != 1:
            pieces = [tokenizer.decode([t]) for t in tids]
            raise TaskError(f"{p}:{lineno}: target {target!r} is {len(tids)} tokens {pieces}, not one",
                            "use a single-token target (mind the leading space), or require_single_token=False")
        wrong, wid = rec.get("wrong_target"), None
        if wrong is not None:
            if not isinstance(wrong, str):
                raise InputError(f"{p}:{lineno}: wrong_target must be a string")
            wids = encode(tokenizer, wrong, add_special_tokens=False)
            if len(wids) != 1:
                raise TaskError(f"{p}:{lineno}: wrong_target {wrong!r} is {len(wids)} tokens, not one",
                                "logit differences need single-token answers")
            wid = int(wids[0])
        ids = _with_bos(encode(tokenizer, rec["prompt"]), tokenizer, prepend_bos)
        corrupted, cids = rec.get("corrupted_prompt"), None
        if corrupted is not None:
            if not isinstance(corrupted, str):
                raise InputError(f"{p}:{lineno}: corrupted_prompt must be a string")
            cids = _with_bos(encode(tokenizer, corrupted), tokenizer, prepend_bos)
            if require_equal_length and len(cids) != len(ids):
                raise TaskError(
                    f"{p}:{lineno}: prompt is {len(ids)} tokens but corrupted_prompt is {len(cids)}",
                    "make them the same token length, or require_equal_length=False",
                )
        items.append(PromptItem(
            prompt=rec["prompt"], target=target, target_ids=tids, ids=tuple(ids),
            corrupted_prompt=corrupted, corrupted_ids=None if cids is None else tuple(cids),
            wrong_target=wrong, wrong_id=wid, meta={"line": lineno},
        ))
    if metric is None:
        metric = "logit_diff" if all(it.wrong_id is not None for it in items) else "answer_logprob"
    if metric not in METRICS:
        raise TaskError(f"unknown metric {metric!r}", f"use one of {METRICS}")
    return PromptSet(
        task=p.stem, items=tuple(items), metric=metric, tokenizer=tokenizer, equal_lengths=require_equal_length,
        params={"path": str(p), "n": len(items), "require_single_token": require_single_token,
                "require_equal_length": require_equal_length, "prepend_bos": prepend_bos},
    )


# --------------------------------------------------------------------------- next-token datasets
def next_token_dataset(
    path: str | Path,
    tokenizer: Any,
    *,
    max_length: int | None = None,
    truncation: str = "error",
    prepend_bos: bool = False,
    n: int | None = None,
) -> TokenBatch:
    """A language-modelling batch for head gating.

    ``path``: a ``.jsonl`` file of ``{"prompt": ..., "target": ...}`` lines (loss on the target
    tokens only; the target may be several tokens and is appended to the prompt as written), or a
    plain text file (documents separated by blank lines; loss on every token).

    Alignment: ``meta["loss_mask"][b, t]`` (bool [B, T]) is True iff token t is a supervised
    target, i.e. the loss term is ``-log p(input_ids[b, t] | input_ids[b, :t])``, read from
    ``logits[b, t - 1]``. So ``loss = CE(logits[:, :-1], input_ids[:, 1:])`` weighted by
    ``loss_mask[:, 1:]``; column 0 is always False, and padding is always False.

    ``max_length`` (default: the tokenizer's model_max_length when it is a real limit): a longer
    sequence raises TaskError naming its line (``truncation="error"``), is cut (``"truncate"``: text
    keeps its start; prompt/target rows drop prompt tokens from the left, after any BOS, so the
    target stays), or (text only) is split into consecutive windows (``"chunk"``).

    Meta: ``loss_mask`` BoolTensor [B, T], ``n_target_tokens`` [B], ``line`` [B] (first line of the
    document or the JSONL line).
    """
    if truncation not in ("error", "truncate", "chunk"):
        raise TaskError(f"unknown truncation {truncation!r}", 'use "error", "truncate" or "chunk"')
    if max_length is None:
        limit = getattr(tokenizer, "model_max_length", None)
        max_length = int(limit) if isinstance(limit, int) and limit < 10_000_000 else None
    p = Path(path)
    rows: list[list[int]] = []
    masks: list[list[bool]] = []
    lines: list[int] = []
    texts: list[str] = []
    bos_len = 1 if prepend_bos and bos_id(tokenizer) is not None else 0

    def too_long(where: str, length: int) -> TaskError:
        return TaskError(f"{where}: {length} tokens, longer than max_length={max_length}",
                         'use truncation="truncate" (or "chunk" for text), or a shorter example')

    if p.suffix in (".jsonl", ".json"):
        if truncation == "chunk":
            raise TaskError('truncation="chunk" only applies to plain text files', 'use "error" or "truncate"')
        for lineno, rec in _read_jsonl(p, ("prompt", "target")):
            prompt_ids = _with_bos(encode(tokenizer, rec["prompt"]), tokenizer, prepend_bos)
            target_ids = encode(tokenizer, rec["target"], add_special_tokens=False)
            if not target_ids:
                raise InputError(f"{p}:{lineno}: target {rec['target']!r} tokenises to nothing")
            ids = prompt_ids + target_ids
            if max_length is not None and len(ids) > max_length:
                if truncation == "error":
                    raise too_long(f"{p}:{lineno}", len(ids))
                keep = max_length - len(target_ids)
                head = prompt_ids[:bos_len]
                if keep <= len(head):
                    raise TaskError(f"{p}:{lineno}: the target alone is {len(target_ids)} tokens, "
                                    f"more than max_length={max_length} allows", "shorten the target")
                prompt_ids = head + prompt_ids[len(prompt_ids) - (keep - len(head)):]
                ids = prompt_ids + target_ids
            rows.append(ids)
            masks.append([False] * len(prompt_ids) + [True] * len(target_ids))
            lines.append(lineno)
            texts.append(rec["prompt"] + rec["target"])
    else:
        raw = read_utf8(p)
        docs: list[tuple[int, str]] = []
        current: list[str] = []
        start = 0
        for lineno, line in enumerate([*raw.splitlines(), ""], start=1):
            if line.strip():
                if not current:
                    start = lineno
                current.append(line)
            elif current:
                docs.append((start, "\n".join(current)))
                current = []
        if not docs:
            raise InputError(f"{p} is empty (no text)", "write documents separated by blank lines")
        for lineno, doc in docs:
            ids = _with_bos(encode(tokenizer, doc), tokenizer, prepend_bos)
            pieces = [ids]
            if max_length is not None and len(ids) > max_length:
                if truncation == "error":
                    raise too_long(f"{p}:{lineno} (document starting there)", len(ids))
                if truncation == "truncate":
                    pieces = [ids[:max_length]]
                else:
                    body = ids[bos_len:]
                    width = max_length - bos_len
                    pieces = [ids[:bos_len] + body[i: i + width] for i in range(0, len(body), width)]
            for piece in pieces:
                rows.append(piece)
                masks.append([False] * max(bos_len, 1) + [True] * (len(piece) - max(bos_len, 1)))
                lines.append(lineno)
                texts.append(tokenizer.decode(piece[bos_len:]))
    if n is not None:
        rows, masks, lines, texts = rows[:n], masks[:n], lines[:n], texts[:n]
    input_ids, attention_mask = pad_batch(rows, pad_id(tokenizer))
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, m in enumerate(masks):
        loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    loss_mask[:, 0] = False
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        meta={"loss_mask": loss_mask, "n_target_tokens": loss_mask.sum(dim=1),
              "line": torch.tensor(lines, dtype=torch.long)},
        texts=texts,
        task=f"next_token:{p.name}",
        params={"path": str(p), "max_length": max_length, "truncation": truncation, "prepend_bos": prepend_bos,
                "kind": "prompt_target" if p.suffix in (".jsonl", ".json") else "text"},
    )
