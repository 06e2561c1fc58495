"""Every notebook runs top to bottom (with a few steps), and none is committed with outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name == "00_quickstart.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs: strip them"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_STEPS", "3")
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    # a cell may take minutes on a busy 2-core machine (08's ERPO run: 3 real-model steps); this bounds a hang
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any(o.get("data", {}).get("application/vnd.plotly.v1+json") or o.get("data", {}).get("text/html")
               for c in nb.cells if c.cell_type == "code" for o in c.outputs), "no figure was drawn"
