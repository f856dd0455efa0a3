"""headmine: attention head mining for transformer language models.

``import headmine as hm`` gives the notebook API (each name is loaded on first use, so importing
headmine stays fast and torch-free until a model is needed):

- ``hm.load(model, device="cpu", dtype="float32")``: a model (embedded name, .gguf, folder, hub id);
- ``hm.scan(lm, detectors=None, ...)``: the head detectors with their causal checks;
- ``hm.ablate / hm.patch / hm.attribute / hm.lens (lm, task=...)``: the causal toolkit, and
  ``hm.method(name, lm, task=..., **options)`` for any registered method (``hm.methods()``);
- ``hm.gate(lm, task=... or data=...)``: Causal Head Gating;
- ``hm.factual(lm)``: the factual-recall mechanisms and a held-out-tested mitigation;
- ``hm.mine(lm, budget="quick", atlas="atlas.db")``: the main job, returning an ``hm.Atlas``;
- ``hm.Atlas(path)``: ``.runs()``, ``.heads(type=...)``, ``.scores(run=...)``, ``.report()``;
- ``hm.show_attention(lm, text, head="L18H6")``: one head's attention, inline;
- ``hm.Result``: what the verbs return (``.to_pandas()``, ``.top(k)``, ``.heatmap()``, ``.save(atlas)``);
- ``hm.HeadId``, ``hm.Site``, ``hm.HeadmineError``: head ids, capture sites, the error base class.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from headmine.core.errors import HeadmineError as HeadmineError
from headmine.core.ids import HeadId as HeadId
from headmine.core.ids import Site as Site

if TYPE_CHECKING:
    from headmine.api import (
        Atlas,
        Result,
        ablate,
        attribute,
        factual,
        gate,
        lens,
        load,
        method,
        methods,
        mine,
        patch,
        scan,
        show_attention,
    )

__version__ = "0.1.0"

#: the notebook API's names, all defined in :mod:`headmine.api` and imported on first use.
API_NAMES = ("Atlas", "Result", "ablate", "attribute", "factual", "gate", "lens", "load", "method", "methods",
             "mine", "patch", "scan", "show_attention")

__all__ = ["API_NAMES", "Atlas", "HeadId", "HeadmineError", "Result", "Site", "__version__", "ablate", "attribute",
           "factual", "gate", "lens", "load", "method", "methods", "mine", "patch", "scan", "show_attention"]


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        value = getattr(import_module("headmine.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'headmine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API_NAMES))
