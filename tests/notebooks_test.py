"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient), as a user's Jupyter
would run it: started in notebooks/, the install cell a no-op outside Colab. Smoke settings
(LMJAX_NOTEBOOK_SMOKE=1: tiny configs, two steps) keep each to seconds of training; the
kernel inherits this process's environment (the CPU backend, 8 fake devices)."""

import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted(pathlib.Path(__file__).resolve().parents[1].glob("notebooks/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LMJAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("NOTEBOOK_WORKDIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} drew no figure"
