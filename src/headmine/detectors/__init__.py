"""Head detectors: pure scores of capture records, registered by name, tagged with survey head types.

```python
from headmine.detectors import DETECTORS, get_detector
det = get_detector("induction")       # det.head_type, det.stage, det.task, det.sites
table = det(record)                    # tidy table (headmine.core.tables)
```
"""

from headmine.core.plugins import import_submodules
from headmine.detectors.base import DETECTORS as DETECTORS
from headmine.detectors.base import BatchScores as BatchScores
from headmine.detectors.base import CausalCheckSpec as CausalCheckSpec
from headmine.detectors.base import Detector as Detector
from headmine.detectors.base import ScoreAccumulator as ScoreAccumulator
from headmine.detectors.base import get_detector as get_detector
from headmine.detectors.base import register as register
from headmine.detectors.base import resolve_detectors as resolve_detectors
from headmine.detectors.base import unregister as unregister
from headmine.detectors.weights import CircuitWeights as CircuitWeights

BUILTIN_MODULES = import_submodules("headmine.detectors")
"""Every module of ``headmine.detectors``: each detector file registers itself (a new detector is one file)."""
