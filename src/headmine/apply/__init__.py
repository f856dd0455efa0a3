"""Put mined heads to work: one file per application, each built on the intervention engine.

```python
from headmine.apply import HeadArtifact, applied, generate_texts
art = HeadArtifact.load("steer.json")               # saved by `headmine steer --save steer`
with applied(lm, art):                               # every forward pass, generate included
    print(generate_texts(lm, ["Q: Is the Earth flat? A:"]))
```

Shared pieces: :mod:`~headmine.apply.artifact` (the saved form: JSON + safetensors, no pickle),
:mod:`~headmine.apply.registry` (the registry and :func:`applied`), :mod:`~headmine.apply.evaluation`
(splits, random-head baselines, bootstrap intervals, corpus cost, generation) and
:mod:`~headmine.apply.result` (the one atlas run type). Every other module is one application that
registers itself where it is defined.
"""

from headmine.apply.artifact import HeadArtifact as HeadArtifact
from headmine.apply.artifact import geometry_of as geometry_of
from headmine.apply.evaluation import corpus_cost as corpus_cost
from headmine.apply.evaluation import effect_row as effect_row
from headmine.apply.evaluation import generate_texts as generate_texts
from headmine.apply.evaluation import group_split as group_split
from headmine.apply.evaluation import random_head_sets as random_head_sets
from headmine.apply.registry import APPLICATIONS as APPLICATIONS
from headmine.apply.registry import Application as Application
from headmine.apply.registry import applied as applied
from headmine.apply.registry import get_application as get_application
from headmine.apply.registry import register_application as register_application
from headmine.apply.result import APPLY_SUMMARY as APPLY_SUMMARY
from headmine.apply.result import ApplyResult as ApplyResult
from headmine.core.plugins import import_submodules

BUILTIN_MODULES = import_submodules("headmine.apply")
"""Every module of ``headmine.apply``: each application file registers itself (a new application is one file)."""
