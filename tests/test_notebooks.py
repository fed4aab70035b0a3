"""The notebooks in notebooks/ run from top to bottom without an error and draw their plots (nbclient, kernel python3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("CI"):  # CI installs the dev extra: a missing notebook runner is a failure there, not a skip
    import nbclient
    import nbformat
else:
    nbformat = pytest.importorskip("nbformat", reason="the dev extra installs nbformat and nbclient")
    nbclient = pytest.importorskip("nbclient", reason="the dev extra installs nbformat and nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["quickstart", "strategy_comparison"])
def test_notebook_runs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # Executed in memory, from the notebooks' own directory: the file on disk stays unexecuted.
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, with the failing cell and traceback, on any error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the notebook's plots were not drawn"
