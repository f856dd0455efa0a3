"""The code's shape: no import cycles, imports at the top of files, no file over 500 lines.

The layer contract itself (core -> ... -> cli) is checked by import-linter (`lint-imports`, config in
pyproject.toml), which `.ci/run` runs; these tests cover what a layers contract cannot see.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[2] / "src" / "headmine"

# Imports allowed inside functions: optional or heavy dependencies a command may never need.
OPTIONAL_IMPORTS = {"ray", "selenium", "IPython", "nbformat", "plotly", "huggingface_hub", "gguf", "pyarrow"}
MAX_LINES = 500


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("headmine", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(module + ".") or module.startswith(imported + "."):
                continue  # a package and its own submodules (re-exports in __init__)
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:20])


def test_imports_are_at_the_top_of_files() -> None:
    inside: list[str] = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                bad = [n for n in names if n.split(".")[0] not in OPTIONAL_IMPORTS]
                if bad:
                    inside.append(f"{path.relative_to(SRC)}:{node.lineno} {fn.name}() imports {', '.join(bad)}")
    assert not inside, f"{len(inside)} imports inside functions:\n" + "\n".join(inside)


def test_no_source_file_is_over_500_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in _sources() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by concept: {long}"
