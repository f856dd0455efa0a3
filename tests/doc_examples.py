"""The extension examples of docs/DEVELOPING.md, read from the doc itself (one source of truth).

Each example is the python block that follows a ``<!-- example: NAME -->`` marker: ``task``,
``detector``, ``method``, ``model`` and ``application``. Tests write them as modules of a package and import them in-process
(tests/unit/test_developing_examples.py) or install them as a plugin package (tests/plugins/test_plugins.py).
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "DEVELOPING.md"
NAMES = ("task", "detector", "method", "model", "application")
"""Import order: the detector's causal check names the task, so the task comes first."""


def doc_examples() -> dict[str, str]:
    """``{name: source}`` for every example block in the doc."""
    text = DOC.read_text(encoding="utf-8")
    found = dict(re.findall(r"<!-- example: (\w+) -->\s*```python\n(.*?)```", text, flags=re.S))
    missing = set(NAMES) - set(found)
    assert not missing, f"docs/DEVELOPING.md lacks the example(s) {sorted(missing)}"
    return found


def write_package(root: Path, package: str) -> Path:
    """Write the examples as ``root/package/{task,detector,method,model,application}.py``; returns the package folder."""
    pkg = root / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The extension examples of docs/DEVELOPING.md."""\n', encoding="utf-8")
    for name, source in doc_examples().items():
        (pkg / f"{name}.py").write_text(source, encoding="utf-8")
    return pkg
