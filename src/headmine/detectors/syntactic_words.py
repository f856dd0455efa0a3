"""Word-level attention and dependency-arc hits, shared by the two syntactic detectors.

Clark et al. 2019 (What does BERT look at?, §4.1) turn token attention into word attention: attention
TO a split word is the sum over its tokens, attention FROM a split word the mean over its tokens. A
head predicts, for a word, the earlier word it attends to most (the first token, BOS, belongs to no
word). In a causal model only the later word of an arc can look at the earlier one, so every arc is
oriented from its later word (dependent or head) to its earlier word.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.detectors.base import query_positions


def word_attention(record: CaptureRecord, a: torch.Tensor, word_of_token: torch.Tensor) -> torch.Tensor:
    """[b, h, W, W]: attention from word w (mean over its captured token rows) to word v (sum over v's
    tokens); rows of words with no captured token are 0."""
    b, t = word_of_token.shape
    n_words = int(word_of_token.max()) + 1
    onehot = torch.zeros(b, t, n_words)
    ok = word_of_token >= 0
    onehot[(*ok.nonzero(as_tuple=True), word_of_token[ok])] = 1.0
    qpos = query_positions(record, a.shape[2])
    rows = onehot[torch.arange(b)[:, None], qpos]  # [b, q, W]
    to_word = a @ onehot[:, None]  # [b, h, q, W]
    count = rows.sum(1).clamp_min(1)  # [b, W]
    return (rows.transpose(1, 2)[:, None] @ to_word) / count[:, None, :, None]


def best_earlier_word(w_att: torch.Tensor) -> torch.Tensor:
    """[b, h, W]: for each word, the earlier word with the most attention (-1 for the first word)."""
    n = w_att.shape[-1]
    earlier = torch.ones(n, n, dtype=torch.bool).tril(-1)
    best = w_att.masked_fill(~earlier, float("-inf")).argmax(-1)
    best[..., 0] = -1
    return best


def syntax_meta(meta: Mapping[str, Any], detector: str) -> tuple[torch.Tensor, list[list[tuple[int, int, str]]]]:
    for key in ("word_of_token", "arcs"):
        if key not in meta:
            raise DetectorError(f"{detector} needs the batch metadata {key!r}", "run it on the treebank task")
    return torch.as_tensor(meta["word_of_token"]).cpu(), [list(a) for a in meta["arcs"]]
