"""`convscope rerun RUN --apply-remedies`: the findings' remedies as settings, applied to a real failing run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convscope.cli import app
from convscope.config import TrainConfig
from convscope.experiments.rerun import remedied
from convscope.runs.findings import Finding, load_findings


def finding(rule: str, severity: str, change: dict) -> Finding:
    return Finding(rule, severity, None, None, "evidence", "remedy", (), change)


def test_factors_multiply_and_values_replace():
    cfg = TrainConfig(lr=0.06, bs=512, bn=False, schedule="constant")
    new, applied, skipped = remedied(cfg, [finding("a", "high", {"lr": "x0.1", "bn": True}),
                                           finding("b", "low", {"bs": "x0.5"})])
    assert new.lr == pytest.approx(0.006) and new.bn is True and new.bs == 256
    assert [(a.setting, a.before, a.rule) for a in applied] == [("lr", 0.06, "a"), ("bn", False, "a"), ("bs", 512, "b")]
    assert skipped == [] and cfg.lr == 0.06  # the original settings are left alone


def test_the_more_severe_finding_decides_a_setting_two_findings_name():
    cfg = TrainConfig(lr=0.06)
    new, applied, skipped = remedied(cfg, [finding("low_one", "low", {"lr": "x10"}),
                                           finding("high_one", "high", {"lr": "x0.1"})])
    assert new.lr == pytest.approx(0.006) and [a.rule for a in applied] == ["high_one"]
    assert [(s.setting, s.rule, s.why) for s in skipped] == [("lr", "low_one", "already set by high_one")]


def test_what_cannot_be_applied_is_said_not_dropped():
    cfg = TrainConfig(model="mymodels:resnet", precision="32")
    findings = [finding("f", "high", {"bn": True, "momentum": 0.5, "precision": "fp8"}),
                finding("info_only", "info", {"lr": "x10"})]  # info asks for no change
    new, applied, skipped = remedied(cfg, findings)
    assert applied == [] and new == cfg
    why = {s.setting: s.why for s in skipped}
    assert why["bn"] == "--model mymodels:resnet builds its own layers"
    assert why["momentum"] == "not a convscope train setting"
    assert "unknown precision 'fp8'" in why["precision"]


def test_the_lr_finder_sets_the_lr_on_the_side_the_finding_names():
    asked = []

    def finder(cfg: TrainConfig) -> float:  # stands in for the LR finder: what it was asked about, a fixed answer
        asked.append(cfg)
        return 0.15

    high = TrainConfig(lr=6.0, bn=False)
    new, applied, _ = remedied(high, [finding("too_high", "high", {"lr": "find:lower", "bn": True})], finder)
    assert new.lr == 0.15 and applied[0] == applied[0].__class__("lr", 6.0, 0.15, "too_high")
    assert asked[-1].bn is True  # the finder sweeps the rerun's model (BatchNorm added), not the old one
    # a finder that answers higher than the lr of a too-high finding: at most half the lr, never raised
    new, _, _ = remedied(TrainConfig(lr=0.2), [finding("too_high", "high", {"lr": "find:lower"})], finder)
    assert new.lr == pytest.approx(0.1)
    new, _, _ = remedied(TrainConfig(lr=6e-5), [finding("too_low", "medium", {"lr": "find:higher"})], finder)
    assert new.lr == 0.15
    new, _, _ = remedied(TrainConfig(lr=0.1), [finding("too_low", "medium", {"lr": "find:higher"})], finder)
    assert new.lr == pytest.approx(0.2)  # at least twice the lr


def test_a_cause_is_fixed_before_its_symptoms():
    cfg = TrainConfig(wd=10.0)
    findings = [finding("near_zero_activations", "high", {"lr": "find:lower"}),
                finding("weight_decay_high", "high", {"wd": 0.01})]
    new, applied, skipped = remedied(cfg, findings, lambda c: 1e-3)
    assert new.wd == 0.01 and new.lr == cfg.lr
    assert [a.rule for a in applied] == ["weight_decay_high"]
    assert [(s.rule, s.why) for s in skipped] == [
        ("near_zero_activations", "a symptom: the cause weight_decay_high is fixed first")]


def test_model_changes_go_into_the_config_and_a_bad_one_is_said():
    cfg = TrainConfig(model="mymodels:resnet")
    findings = [finding("dead_at_init", "high", {"init": "default"}),
                finding("frozen_parameters", "high", {"unfreeze": True}),
                finding("dropout_high", "high", {"dropout": 2.0})]
    new, applied, skipped = remedied(cfg, findings)
    assert new.model_changes == {"init": "default", "unfreeze": True} and cfg.model_changes == {}
    assert [a.setting for a in applied] == ["init", "unfreeze"]
    assert skipped[0].setting == "dropout" and "dropout=2.0 is not valid" in skipped[0].why


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # two trainings of 20k images at bs 64: about a minute on a quiet 2-core CPU
def test_the_books_failing_run_rerun_with_its_remedies_reaches_97_percent(data_dir, tmp_path, monkeypatch):
    """No BatchNorm at a constant lr of 0.06 and batch size 64: the activations collapse in the first steps
    and the run ends near 80% (README, "Seeing inside"). Its findings ask for BatchNorm and 1cycle."""
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--no-bn", "--schedule", "constant", "--bs", "64", "--lr", "0.06",
                                  "--limit-train", "20000", "--device", "cpu", "--name", "fail"])
    assert trained.exit_code == 0, trained.output
    failed = tmp_path / "runs" / "fail"
    before = digest(failed)
    old_accuracy = json.loads((failed / "metrics.jsonl").read_text().splitlines()[-1])["accuracy"]
    assert old_accuracy < 0.9
    changes = {f.rule: f.change for f in load_findings(failed) if f.severity == "high"}
    assert changes["near_zero_activations"] == {"bn": True, "schedule": "one-cycle"}

    rerun = runner.invoke(app, ["rerun", str(failed), "--apply-remedies"])
    assert rerun.exit_code == 0, rerun.output
    fixed = tmp_path / "runs" / "fail-remedied"
    config = json.loads((fixed / "config.json").read_text())
    old_config = json.loads((failed / "config.json").read_text())
    assert config["bn"] is True and config["schedule"] == "one-cycle"
    assert {k: v for k, v in config.items() if k not in ("bn", "schedule", "name", "out", "versions")} == \
        {k: v for k, v in old_config.items() if k not in ("bn", "schedule", "name", "out", "versions")}
    new_accuracy = json.loads((fixed / "metrics.jsonl").read_text().splitlines()[-1])["accuracy"]
    assert new_accuracy >= 0.97
    assert f"{old_accuracy:.4f}" in rerun.output and f"{new_accuracy:.4f}" in rerun.output
    assert digest(failed) == before  # the original run is read, never written

    again = runner.invoke(app, ["rerun", str(fixed), "--apply-remedies"])  # healthy: nothing to change
    assert again.exit_code == 2 and "nothing to change" in again.stderr
    assert not (tmp_path / "runs" / "fail-remedied-remedied").exists()


def test_a_run_recorded_by_watch_is_refused_in_one_line(tmp_path):
    import torch

    import convscope

    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with convscope.watch(model, run_dir=tmp_path / "mine") as w:
        model(torch.randn(8, 4)).sum().backward()
        w.step()
    result = CliRunner().invoke(app, ["rerun", str(tmp_path / "mine"), "--apply-remedies"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: {tmp_path / 'mine'} was recorded by convscope.watch")
    assert "\n" not in result.stderr.strip()


def test_a_findings_change_survives_findings_json_and_a_damaged_one_is_refused(tmp_path):
    from convscope.errors import RunError
    from convscope.runs.findings import save_findings

    saved = [finding("near_zero_activations", "high", {"bn": True, "lr": "x0.1"})]
    save_findings(tmp_path, saved)
    assert load_findings(tmp_path) == saved
    rows = json.loads((tmp_path / "findings.json").read_text())
    rows[0]["change"] = ["bn"]
    (tmp_path / "findings.json").write_text(json.dumps(rows))
    with pytest.raises(RunError, match="finding 0 has a change that is not an object of settings"):
        load_findings(tmp_path)
