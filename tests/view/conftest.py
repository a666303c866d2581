"""Two short real runs shared by the view tests: the book's failing run (no BatchNorm, constant lr 0.06 at
bs 64) and its fix (BatchNorm, 1cycle, here at bs 128 for more steps), each one epoch on the first 2,048
training images of real MNIST, with statistics at every 2nd step and their findings. Tests that change a
run work on a copy."""

from __future__ import annotations

from pathlib import Path

import pytest

N_TRAIN, EVERY = 2048, 2


def _train(data_dir: Path, out: Path, name: str, **settings) -> Path:
    from convscope import TrainConfig, load_run
    from convscope.diagnose import diagnose, save_findings
    from convscope.experiments import run_training
    from convscope.stats import ActivationStats

    cfg = TrainConfig(data_root=str(data_dir), limit_train=N_TRAIN, epochs=1, device="cpu", out=str(out), name=name,
                      **settings)
    # stats=False + an ActivationStats callback: stats.npz at a known interval, no (slow) report.html
    result = run_training(cfg, stats=False, cbs=[ActivationStats(every=EVERY)])
    save_findings(result.run_dir, diagnose(load_run(result.run_dir)))
    return result.run_dir


@pytest.fixture(scope="session")
def book_runs(data_dir, tmp_path_factory) -> dict[str, Path]:
    """{'no-bn': run folder, 'bn': run folder}, both in one runs folder."""
    out = tmp_path_factory.mktemp("view-runs")
    return {"no-bn": _train(data_dir, out, "no-bn", bn=False, schedule="constant", bs=64, lr=0.06),
            "bn": _train(data_dir, out, "bn", bs=128, lr=0.06)}
