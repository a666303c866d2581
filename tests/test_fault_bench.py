"""benchmarks/fault_bench.py --quick: real short runs with injected faults and a healthy control, and the
counts its summary line reports, checked against the per-run verdicts it writes (--json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_bench.py"


def test_quick_benchmark_detects_its_faults_and_passes_its_control(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "CONVSCOPE_DATA": str(data_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCH.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    fields = dict(item.split("=") for item in last.split()[1:])
    assert last.startswith("fault_bench ") and set(fields) == {"recall", "false_positive_runs", "localised",
                                                               "median_detect_frac", "fixed"}
    result = json.loads(out.read_text())
    rows = result["rows"]
    faults = [r for name in ("book_no_bn", "shuffled_labels", "frozen_all") for r in rows[name]]
    assert len(faults) == 3 and len(rows["book"]) == 1  # three faults and the book control, one seed
    # the summary's counts are the per-run verdicts', and every quick fault is found by a rule of its class
    assert sum(r["detected"] for r in faults) == 3 and fields["recall"] == "1.000"
    assert int(fields["false_positive_runs"]) == sum(r["false_positive"] for r in rows["book"]) == 0
    # the book's failing case collapses within its first quarter, and a collapse is its finding
    assert rows["book_no_bn"][0]["rule"] in ("near_zero_activations", "collapse_cycles", "vanishing_gradients")
    assert rows["book_no_bn"][0]["detect_frac"] <= 0.25
    assert rows["shuffled_labels"][0]["rule"] in ("no_signal", "not_learning")
    assert rows["frozen_all"][0]["rule"] in ("frozen_parameters", "not_learning")
    # the frozen body is seen at once: the rule needs 4 recorded rows (8 steps) from step 0
    assert 0 < rows["frozen_all"][0]["detect_frac"] <= 0.2
    # the control trains (the healthy reference of `fixed`): well above chance on 6,400 images
    assert rows["book"][0]["accuracy"] > 0.8
    # Remedies checked by a rerun: unfreezing the frozen body gives the control's own model (same seed, same
    # weights), so its rerun trains exactly as the control did; shuffled labels have no setting to fix them.
    assert rows["frozen_all"][0]["fixed"] is True
    assert rows["frozen_all"][0]["rerun_accuracy"] == rows["book"][0]["accuracy"]
    assert rows["shuffled_labels"][0]["fixed"] is False
