"""Each notebook's code cells run top to bottom (in smoke mode: tiny config, two steps)."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted(pathlib.Path(__file__).resolve().parents[1].glob("notebooks/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_WORKDIR", str(tmp_path))
    cells = json.loads(path.read_text())["cells"]
    namespace = {"SMOKE": True}
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(line for line in cell["source"] if not line.lstrip().startswith("%"))
            exec(compile(source, f"{path.name}", "exec"), namespace)
