"""lr-study: four schedules from one start; the book's answer to 'why warm up, why anneal' in numbers."""

from __future__ import annotations

import numpy as np
import pytest

from convscope import TrainConfig
from convscope.experiments.lr_study import SCHEDULES, lr_study, schedule_for


def test_schedules_start_identically_and_high_constant_collapses(data_dir):
    cfg = TrainConfig(data_root=str(data_dir), bn=False, bs=512, lr=0.06, limit_train=512 * 24, device="cpu")
    rows = {r.schedule: r for r in lr_study(cfg)}
    assert list(rows) == list(SCHEDULES)
    # Same weights and same first batch: the first step's loss is identical whatever the lr.
    first = {name: r.losses[0] for name, r in rows.items()}
    assert len(set(first.values())) == 1, first
    # The lr each run used follows its schedule (checked against the curve, not the recorder itself).
    for name, r in rows.items():
        curve = schedule_for(name, 0.06)["lr"]
        expected = [curve(i / (len(r.lrs) - 1)) for i in range(len(r.lrs))]
        np.testing.assert_allclose(r.lrs, expected, rtol=1e-9)
    # Constant high lr without warm-up: some conv/ReLU layer goes (almost) entirely to zero early on.
    high = rows["constant-high"]
    assert high.layer_near_zero[: len(high.lrs) // 2].max() >= 0.95


@pytest.mark.slow
def test_full_study_one_cycle_is_best_or_close(data_dir):
    cfg = TrainConfig(data_root=str(data_dir), bn=False, bs=512, lr=0.06, device="cpu")
    rows = {r.schedule: r for r in lr_study(cfg)}
    best = max(r.accuracy for r in rows.values())
    assert rows["one-cycle"].accuracy >= best - 0.002
    assert rows["constant-high"].collapses >= 1 or rows["constant-high"].peak_near_zero >= 0.75
    assert rows["constant-high"].accuracy < 0.5


@pytest.mark.parametrize("args, message", [
    (["--lr", "0"], "lr must be a finite number > 0, got 0.0"),
    (["--bs", "0"], "bs (batch size) must be a whole number >= 1, got 0"),
    (["--device", "tpu"], "device 'tpu'"),
    (["--data-root", "/nonexistent/folder"], "/nonexistent/folder"),
])
def test_bad_input_is_one_line_exit_2_and_no_run_folder(data_dir, tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from convscope.cli import app

    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    result = CliRunner().invoke(app, ["lr-study", "--out", str(tmp_path / "runs"), "--name", "s", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:") and message in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "s").exists()
