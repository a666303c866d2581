"""Findings while training (experiments/live_findings.py) and `convscope train --stop-on`, on real MNIST."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from convscope import TrainConfig
from convscope.cli import app
from convscope.config import STOP_ON_SEVERITIES
from convscope.diagnose import SEVERITIES
from convscope.diagnose.live import RunSoFar, diagnose_so_far
from convscope.experiments import run_training
from convscope.experiments.live_findings import LiveFindings
from convscope.runs.checkpoint import load_checkpoint
from convscope.runs.findings import load_findings
from convscope.train.callback import Callback

# The book's failing case (no BatchNorm, constant lr 0.06, bs 64) on the first 6,400 images (100 steps):
# its activations collapse there as on the full set (docs/fault_bench.md).
FAILING = {"bn": False, "schedule": "constant", "lr": 0.06, "bs": 64, "limit_train": 6400, "stats_every": 2}


def test_stop_on_names_only_severities_that_ask_for_a_change():
    assert STOP_ON_SEVERITIES == SEVERITIES[:-1]


def test_a_diverging_loss_is_not_judged_before_the_run_ends():
    # A loss that rose to 2x its best: loss_diverging for a finished run, nothing yet while training.
    loss = np.concatenate([np.linspace(2.3, 0.5, 50), np.linspace(0.5, 1.0, 50)]).astype(np.float32)
    steps = {"step": np.arange(100), "loss": loss, "lr": np.full(100, 0.01)}
    so_far = RunSoFar({}, [], steps, None, progress=0.5)
    assert diagnose_so_far(so_far) == []
    so_far.complete = True
    assert "loss_diverging" in [f.rule for f in diagnose_so_far(so_far)]


class ReadFindingsMidRun(Callback):
    """Reads findings.json while the run trains (what a live view does), at every 10th step."""

    order = 1001

    def __init__(self, path) -> None:
        self.path = path
        self.seen: list[tuple[int, list[str]]] = []

    def after_batch(self) -> None:
        path = self.path
        if self.learn.training and self.learn.train_iter % 10 == 0 and path.exists():
            self.seen.append((self.learn.train_iter, [row["rule"] for row in json.loads(path.read_text())]))


def test_the_failing_case_stops_early_with_its_checkpoint_and_finding(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    args = ["train", "--out", str(tmp_path), "--name", "r", "--no-bn", "--schedule", "constant", "--lr", "0.06",
            "--bs", "64", "--limit-train", "6400", "--stats-every", "2", "--stop-on", "high"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "r"
    findings = load_findings(run)
    first = findings[0]
    assert first.severity == "high" and first.found_at is not None
    steps = np.load(run / "steps.npz")["step"]
    # Stopped at the check where the finding appeared, well before the 100 steps of the run.
    assert len(steps) == first.found_at < 0.6 * 100
    assert first.rule in result.output and "--apply-remedies" in result.output
    checkpoint = load_checkpoint(run)  # what --resume and rerun read: whole, at the step it stopped
    assert checkpoint is not None and (run / "checkpoint" / "model.safetensors").exists()


@pytest.mark.slow
def test_findings_appear_while_training_and_keep_their_first_step(data_dir, tmp_path):
    cfg = TrainConfig(**FAILING, data_root=str(data_dir), out=str(tmp_path), name="r", device="cpu")
    live, reader = LiveFindings(every=4), ReadFindingsMidRun(tmp_path / "r" / "findings.json")
    result = run_training(cfg, cbs=[live, reader])
    assert result.stopped_by is None
    # findings.json existed mid-run, written by the live check, before the run ended
    assert reader.seen and reader.seen[0][0] < result.learn.total_steps and reader.seen[0][1]
    final = load_findings(tmp_path / "r")
    live_rules = {f.rule: f.found_at for f in live.findings}
    # every finding first seen while training keeps that step, a multiple of the check interval
    for f in final:
        if f.rule in live.first_seen:
            assert f.found_at == live.first_seen[f.rule] and f.found_at % 4 == 0
    assert live_rules, "the failing case shows a finding while it trains"
    assert min(live.first_seen.values()) < result.learn.total_steps


@pytest.mark.parametrize("bad", ["severe", "info", 1])
def test_stop_on_takes_a_severity_name_only(bad):
    from convscope.errors import ConfigError

    with pytest.raises(ConfigError, match="stop_on must be one of high, medium, low"):
        TrainConfig(stop_on=bad)


@pytest.mark.parametrize("budget", [0.01, None])
def test_checks_that_cost_more_than_their_budget_come_less_often(monkeypatch, budget):
    """A check of 5 ms after steps of ~0.1 ms is far over 1% of the training time: the interval doubles from
    every 4 steps up to total/8 (never fewer than 8 checks); without a budget it stays at 2% of the steps."""
    import time
    from types import SimpleNamespace

    live = LiveFindings(budget=budget)
    checked: list[int] = []
    monkeypatch.setattr(live, "check", lambda: (checked.append(live.learn.train_iter), time.sleep(0.005)))
    live.learn = SimpleNamespace(training=True, train_iter=0, total_steps=200, cbs=[])
    live.before_fit()
    for step in range(200):
        live.learn.train_iter = step
        live.before_batch()
        time.sleep(0.0001)  # the step
        live.after_batch()
    if budget is None:
        assert checked == list(range(0, 200, 4))
    else:
        assert live._every == 16 and 200 // 16 <= len(checked) <= 200 // 8  # 200 // 8 = 25: the widest is 16
        assert all(s % 4 == 0 for s in checked) and checked[-1] % 16 == 0
