"""Runs that survive: killed or interrupted mid-epoch, then resumed, equal an uninterrupted run bitwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

WORKER = Path(__file__).with_name("resume_worker.py")
STEPS_PER_EPOCH = 4096 // 256  # 16: the worker's limit_train / bs
MID_EPOCH_2 = STEPS_PER_EPOCH + 7


def run_worker(run_dir: Path, mode: str, at_step: int = 0, recipe: str = "book") -> int:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(WORKER), str(run_dir), mode, str(at_step), recipe], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode not in (0, 130, 143, -signal.SIGKILL):
        raise AssertionError(proc.stderr[-3000:])
    return proc.returncode


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def run_files(run_dir: Path) -> dict:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    with np.load(run_dir / "steps.npz") as s, np.load(run_dir / "stats.npz") as st:
        steps = {k: s[k] for k in s.files}
        stats = {k: st[k] for k in st.files}
    return {"metrics": without_time(metrics), "steps": steps, "stats": stats,
            "weights": load_file(run_dir / "checkpoint" / "model.safetensors")}


def assert_identical(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    for key in a["steps"]:
        np.testing.assert_array_equal(a["steps"][key], b["steps"][key], err_msg=f"steps.npz {key}")
    assert len(np.unique(b["steps"]["step"])) == len(b["steps"]["step"]), "duplicated step rows"
    for key in a["stats"]:
        np.testing.assert_array_equal(a["stats"][key], b["stats"][key], err_msg=f"stats.npz {key}")
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        np.testing.assert_array_equal(a["weights"][key], b["weights"][key], err_msg=key)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    os.environ.setdefault("CONVSCOPE_DATA", str(data_dir))
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert run_worker(run_dir, "straight") == 0
    files = run_files(run_dir)
    assert len(files["steps"]["step"]) == 2 * STEPS_PER_EPOCH and len(files["metrics"]) == 2
    return files


# SIGKILL then --resume is also what tests/test_killed_anywhere.py does at 20 random moments in every run
@pytest.mark.parametrize("mode, code", [pytest.param("kill", -signal.SIGKILL, marks=pytest.mark.slow), ("int", 130),
                                        ("term", 143)])
def test_interrupted_then_resumed_equals_straight(straight, tmp_path, mode, code):
    run_dir = tmp_path / "run"
    assert run_worker(run_dir, mode, MID_EPOCH_2) == code
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    if mode == "kill":
        # Killed with no chance to save: the last checkpoint is the end of epoch 1, and the folder still loads.
        assert (state["epoch"], state["iter"]) == (1, 0)
        from convscope import load_run

        assert len(load_run(run_dir).metrics) == 1
    else:
        # A graceful stop checkpoints where it stopped: after step MID_EPOCH_2, mid-way through epoch 2.
        assert (state["epoch"], state["iter"], state["train_iter"]) == (1, MID_EPOCH_2 - STEPS_PER_EPOCH,
                                                                        MID_EPOCH_2)
    assert run_worker(run_dir, "resume") == 0
    assert_identical(straight, run_files(run_dir))


@pytest.mark.parametrize("at_step", [7, MID_EPOCH_2])
def test_fast_recipe_resumed_before_or_after_the_freeze_equals_straight(tmp_path, data_dir, at_step):
    """The fast recipe freezes conv1 after 30% of the steps (step 10 of 32) and conv2 after 80% (step 26): a
    run stopped before a freeze must freeze at the same step after resuming, and a frozen layer must stay
    frozen."""
    os.environ.setdefault("CONVSCOPE_DATA", str(data_dir))
    assert run_worker(tmp_path / "straight", "straight", recipe="fast") == 0
    straight = run_files(tmp_path / "straight")
    assert run_worker(tmp_path / "run", "int", at_step, recipe="fast") == 130
    assert run_worker(tmp_path / "run", "resume", recipe="fast") == 0
    assert_identical(straight, run_files(tmp_path / "run"))
    # The layers really froze at steps 10 and 26 (ceil(0.3 * 32), ceil(0.8 * 32)): NaN gradient rows from
    # there on, finite ones before; conv3 trains to the end.
    steps, grad = straight["stats"]["steps"], straight["stats"]["grad_norm"]
    layers = list(straight["stats"]["layers"])
    for layer, first_frozen in (("conv1.conv", 10), ("conv2.conv", 26), ("conv3.conv", 32)):
        col = grad[:, layers.index(layer)]
        assert np.all(np.isfinite(col[steps < first_frozen])) and np.all(np.isnan(col[steps >= first_frozen]))


def test_resume_through_the_cli(straight, tmp_path):
    run_dir = tmp_path / "run"
    assert run_worker(run_dir, "int", MID_EPOCH_2) == 130
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert_identical(straight, run_files(run_dir))


def test_resume_refuses_a_missing_or_foreign_run(tmp_path):
    for target, message in [(tmp_path / "nope", "does not exist"), (tmp_path, "no usable checkpoint")]:
        proc = subprocess.run([sys.executable, "-m", "convscope", "train", "--resume", str(target)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
