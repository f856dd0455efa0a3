"""The embedded English corpus (plain prose written for headmine; no download), as text,
paragraphs and sentences. Natural-text probes and the needle haystack read it."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def corpus_text() -> str:
    """The embedded English corpus (plain prose written for headmine; no download)."""
    return resources.files("headmine.tasks").joinpath("data/corpus.txt").read_text(encoding="utf-8")


def corpus_paragraphs() -> list[str]:
    return [p.strip() for p in corpus_text().split("\n\n") if p.strip()]


def corpus_sentences() -> list[str]:
    out: list[str] = []
    for para in corpus_paragraphs():
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", para) if s.strip())
    return out
