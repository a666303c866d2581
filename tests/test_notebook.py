"""docs/chapter13.ipynb executes on a real Jupyter kernel (nbclient + ipykernel) and tells the chapter's story.

It trains six small runs (~1 min on an idle 2-core machine): part of the default run, so CI executes the
notebook every time (the test workers run files side by side, pyproject.toml's addopts).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbclient, ipykernel and nbformat (the dev extra)")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient, ipykernel and nbformat (the dev extra)")
pytest.importorskip("ipykernel", reason="needs nbclient, ipykernel and nbformat (the dev extra)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "chapter13.ipynb"
SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_chapter_13_notebook_runs_and_shows_the_chapter(data_dir, tmp_path, monkeypatch):
    # The kernel is a new process: it must import this checkout's convscope and find the real data.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    no_bn, bn = (float(v) for v in re.search(r"without BatchNorm: ([\d.]+), with BatchNorm and 1cycle: ([\d.]+)",
                                              text).groups())
    assert no_bn < 0.5 < 0.9 < bn  # the no-BN run fails, 1cycle with BatchNorm learns
    assert len(re.findall(r"bs +\d+: +\d+ steps, accuracy", text)) == 3
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4  # plot_layer_stats, color_dim twice and the schedule (the rest are inside HTML)
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("near_zero_activations" in h and "data:image/png;base64," in h for h in html)  # the saved run
