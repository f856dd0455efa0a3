"""The tutorials in docs/tutorials/ run top to bottom in a fresh kernel (nbclient), so a broken tutorial
fails CI. Each tutorial checks its own claims with asserts (e.g. the toy's induction heads are found and
confirmed); a failed assert is a failed test here."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

pytestmark = pytest.mark.slow

TUTORIALS = Path(__file__).resolve().parents[2] / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def run_notebook(path: Path, workdir: Path, *, timeout: int = 900) -> nbformat.NotebookNode:
    """Execute ``path`` in ``workdir`` with the python3 kernel of this environment; returns the executed notebook."""
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(book, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return book


def test_there_are_four_tutorials():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs(path: Path, tmp_path: Path) -> None:
    try:
        book = run_notebook(path, tmp_path)
    except CellExecutionError as err:  # the failing cell's source and error, not the kernel's traceback
        pytest.fail(f"{path.name}: {str(err)[-3000:]}")
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    if os.environ.get("HEADMINE_TUTORIAL_OUT"):  # keep the executed notebook (docs screenshots)
        out = Path(os.environ["HEADMINE_TUTORIAL_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(book, out / path.name)
