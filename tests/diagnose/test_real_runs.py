"""Diagnosis of real MNIST runs: the book's failing case and its healthy counterpart."""

from __future__ import annotations

import pytest

from convscope import TrainConfig, load_run
from convscope.diagnose import diagnose
from convscope.experiments import run_training


@pytest.mark.slow
def test_book_failing_case_gets_a_high_near_zero_or_collapse_finding(data_dir, tmp_path):
    """No BatchNorm, constant lr 0.06, bs 64 (the book's 'activations collapse' example)."""
    cfg = TrainConfig(data_root=str(data_dir), out=str(tmp_path), name="fail", bn=False, schedule="constant",
                      bs=64, lr=0.06, device="cpu")
    run_training(cfg)
    findings = diagnose(load_run(tmp_path / "fail"))
    high = [f for f in findings if f.severity == "high" and f.rule in ("near_zero_activations", "collapse_cycles")]
    assert high, [f.rule for f in findings]
    assert high[0].layer and all(name.startswith("conv") for name in high[0].layers)


@pytest.mark.slow
def test_book_healthy_case_gets_no_high_finding(data_dir, tmp_path):
    """BatchNorm + fit_one_cycle(1, 0.06), bs 512."""
    cfg = TrainConfig(data_root=str(data_dir), out=str(tmp_path), name="good", device="cpu")
    result = run_training(cfg)
    assert not [f for f in result.findings if f.severity == "high"], result.findings
    assert [f.rule for f in diagnose(load_run(tmp_path / "good"))] == ["healthy"]
