"""The HTML atlas report: read-only over the atlas, no torch, one self-contained page per model.

```python
from headmine.report import build_report
files = build_report("atlas.db", "headmine-out/report")   # index.html + one page per model
```
"""

from headmine.atlas.artifacts import ARTIFACT_CONVENTIONS, make_attn_examples, parse_attn_examples
from headmine.report.build import MANIFEST, ReportFiles, build_report, slug
from headmine.report.data import ModelData, load_model_data
from headmine.report.render import script_json

__all__ = [
    "ARTIFACT_CONVENTIONS",
    "MANIFEST",
    "ModelData",
    "ReportFiles",
    "build_report",
    "load_model_data",
    "make_attn_examples",
    "parse_attn_examples",
    "script_json",
    "slug",
]
