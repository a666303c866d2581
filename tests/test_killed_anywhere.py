"""Killed anywhere, resumed, equal: SIGKILL at random moments of a short real run, each followed by a resume,
each ending bitwise equal (weights, statistics, steps, metrics) to the uninterrupted run.

The moments (training batches, and the steps of every file write: checkpoints, run files, the report) are
drawn from a seed that the test prints; rerun one draw with CONVSCOPE_KILL_SEED=<seed>. The worker,
tests/kill_worker.py, says what a moment is and how each run is made.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

WORKER = Path(__file__).with_name("kill_worker.py")


@pytest.fixture(scope="module")
def tiny_mnist(mnist_subset) -> Path:
    """mnist/ with the first 512 training and 256 test images of real MNIST (raw IDX): runs of a second."""
    return mnist_subset(512, 256)


def run_files(run_dir: Path) -> dict:
    metrics = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    with np.load(run_dir / "steps.npz") as steps, np.load(run_dir / "stats.npz") as stats:
        return {"metrics": metrics, "steps": dict(steps), "stats": dict(stats),
                "weights": load_file(run_dir / "checkpoint" / "model.safetensors")}


def assert_identical(a: dict, b: dict, what: str) -> None:
    assert a["metrics"] == b["metrics"], what
    for part in ("steps", "stats", "weights"):
        assert a[part].keys() == b[part].keys(), f"{what}: {part}"
        for key in a[part]:
            np.testing.assert_array_equal(a[part][key], b[part][key], err_msg=f"{what}: {part} {key}")


def killed_anywhere(tiny_mnist: Path, tmp_path: Path, n: int) -> None:
    seed = int(os.environ.get("CONVSCOPE_KILL_SEED") or random.SystemRandom().randrange(2**31))
    print(f"kill moments drawn with CONVSCOPE_KILL_SEED={seed}")
    proc = subprocess.run([sys.executable, str(WORKER), str(tiny_mnist), str(tmp_path), str(seed), str(n)],
                          capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    assert proc.returncode == 0, f"seed {seed}:\n{proc.stderr[-3000:]}"
    summary = json.loads(proc.stdout)
    straight = run_files(tmp_path / "straight" / "run")
    assert len(straight["steps"]["step"]) == 8 and len(straight["metrics"]) == 2
    assert len(summary["trials"]) == n
    for trial in summary["trials"]:
        what = f"seed {seed}, killed at moment {trial['moment']} of {summary['moments']}"
        assert trial["killed"] == 128 + 9, f"{what}: not killed ({trial['killed']})"
        assert trial["resumed"] == 0, f"{what}: the resume failed\n{proc.stderr[-3000:]}"
        run_dir = Path(trial["run"])
        assert_identical(straight, run_files(run_dir), what)
        assert (run_dir / "report.html").is_file(), what
        assert not [p for p in run_dir.rglob(".*")], f"{what}: temporary files left"


def test_killed_at_20_random_moments_then_resumed_equals_straight(tiny_mnist: Path, tmp_path: Path) -> None:
    killed_anywhere(tiny_mnist, tmp_path, 20)


@pytest.mark.slow
def test_killed_at_120_random_moments_then_resumed_equals_straight(tiny_mnist: Path, tmp_path: Path) -> None:
    killed_anywhere(tiny_mnist, tmp_path, 120)
