"""The notebook API behind ``import headmine as hm`` (see :mod:`headmine` for the list of names).

- :mod:`.run`: the verbs (load, scan, ablate, patch, attribute, lens, method, gate, factual, mine,
  show_attention), one function per CLI verb;
- :mod:`.results`: :class:`Result` (``to_pandas``, ``top``, ``heatmap``, ``labels``, ``save``);
- :mod:`.atlas_view`: :class:`Atlas` (runs, heads, scores, labels, report inline);
- :mod:`.figures`: the plotly heatmap and the inline attention view;
- :mod:`.notebook`: headmine errors shown as one short message in IPython.
"""

from headmine.api.atlas_view import Atlas, ReportView
from headmine.api.figures import AttentionView, heatmap
from headmine.api.notebook import install_error_display
from headmine.api.results import Result
from headmine.api.run import (
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

install_error_display()

__all__ = [
    "Atlas",
    "AttentionView",
    "ReportView",
    "Result",
    "ablate",
    "attribute",
    "factual",
    "gate",
    "heatmap",
    "install_error_display",
    "lens",
    "load",
    "method",
    "methods",
    "mine",
    "patch",
    "scan",
    "show_attention",
]
