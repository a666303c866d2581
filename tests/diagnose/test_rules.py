"""Each diagnosis rule on hand-made statistics: it fires where it should and stays quiet where not."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from convscope.diagnose import Finding, diagnose
from convscope.diagnose import rules as R
from convscope.runs.stats_data import ActivationStatsData

LAYERS = ["conv1.conv", "conv1.act", "conv1.bn", "conv2.conv", "conv2.act", "conv2.bn"]
KINDS = ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d"]


def make_stats(n=100, **overrides) -> ActivationStatsData:
    """Healthy-looking statistics: near-zero ~50% after ReLU, std ~1, gradients ~1e-2, updates ~1e-2 (what AdamW
    gives at the book's lr: 0.011-0.026 in the fault benchmark's healthy controls)."""
    L = len(LAYERS)
    has_params = np.array([k != "ReLU" for k in KINDS])
    arrays = {
        "mean": np.full((n, L), 0.3), "std": np.full((n, L), 1.0), "near_zero": np.full((n, L), 0.5),
        "dead": np.zeros((n, L)), "hist": np.zeros((n, L, 40), np.float32),
        "grad_norm": np.where(has_params, 1e-2, np.nan) * np.ones((n, L)),
        "update_ratio": np.where(has_params, 1e-2, np.nan) * np.ones((n, L)),
    }
    arrays.update(overrides)
    return ActivationStatsData(layers=LAYERS, steps=np.arange(n), hist_range=np.tile([0.0, 10.0], (L, 1)),
                               kinds=KINDS, **arrays)


@dataclass
class FakeRun:
    stats: ActivationStatsData | None = None
    # a loss that falls and levels off, as a finished healthy run's does
    steps: dict = field(default_factory=lambda: {"step": np.arange(100),
                                                 "loss": 0.1 + 2.2 * np.exp(-np.arange(100) / 10)})
    metrics: list = field(default_factory=list)

    @property
    def activation_stats(self):
        return self.stats

    @property
    def has_stats(self):
        return self.stats is not None


def rules_fired(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


def test_healthy_run_gets_only_the_healthy_finding():
    findings = diagnose(FakeRun(make_stats()))
    assert [f.rule for f in findings] == ["healthy"] and findings[0].severity == "info"


def test_near_zero_stuck_fires_high_and_names_first_layer():
    nz = np.full((100, 6), 0.5)
    nz[:, 3:] = 0.99  # conv2 and its ReLU pass nothing on
    f = R.near_zero_activations(FakeRun(make_stats(near_zero=nz)))
    assert len(f) == 1 and f[0].severity == "high" and f[0].layer == "conv2.conv"
    assert set(f[0].layers) == {"conv2.conv", "conv2.act"}  # BatchNorm output is centred by design: skipped
    assert f[0].steps == (75, 99)


def test_dead_channels_fire_even_when_near_zero_is_moderate():
    dead = np.zeros((100, 6))
    dead[:, 1] = 0.6
    f = R.near_zero_activations(FakeRun(make_stats(dead=dead)))
    assert f and f[0].layer == "conv1.act" and "60% of channels dead" in f[0].evidence


def test_near_zero_below_threshold_does_not_fire():
    nz = np.full((100, 6), 0.9)  # high but below NEAR_ZERO_HIGH, and not growing
    assert R.near_zero_activations(FakeRun(make_stats(near_zero=nz))) == []


def test_growing_near_zero_is_medium():
    nz = np.full((100, 6), 0.5)
    nz[:, 4] = np.linspace(0.4, 0.9, 100)
    f = R.near_zero_activations(FakeRun(make_stats(near_zero=nz)))
    assert [x.rule for x in f] == ["near_zero_growing"] and f[0].layer == "conv2.act"


def test_collapse_cycles_need_two_episodes():
    nz = np.full((100, 6), 0.5)
    nz[10:15, 0] = 0.97  # one collapse: a transient
    assert R.collapse_cycles(FakeRun(make_stats(near_zero=nz))) == []
    nz[30:36, 0] = 0.99  # a second one: the cycle
    nz[50:52, 0] = 0.95
    f = R.collapse_cycles(FakeRun(make_stats(near_zero=nz)))
    assert len(f) == 1 and f[0].severity == "high" and f[0].layer == "conv1.conv"
    assert f[0].steps == (10, 50) and "3 times" in f[0].evidence


def test_collapse_ignores_a_series_that_stays_high_without_recovering():
    nz = np.full((100, 6), 0.5)
    nz[5:, 1] = 0.99  # collapses once and never recovers: near_zero_activations' job, not a cycle
    assert R.collapse_cycles(FakeRun(make_stats(near_zero=nz))) == []


def test_depth_scale_flags_a_tenfold_jump_between_weight_layers():
    std = np.ones((100, 6))
    std[:, 3] = 15.0
    f = R.depth_scale(FakeRun(make_stats(std=std)))
    assert [x.rule for x in f] == ["exploding_activations"] and f[0].layer == "conv2.conv"
    std[:, 3] = 0.05
    assert [x.rule for x in R.depth_scale(FakeRun(make_stats(std=std)))] == ["vanishing_activations"]
    std[:, 3] = 5.0  # 5x: within range
    assert R.depth_scale(FakeRun(make_stats(std=std))) == []


def test_vanishing_and_exploding_gradients():
    g = make_stats().grad_norm.copy()
    g[:, 0] = 1e-9
    f = R.gradient_health(FakeRun(make_stats(grad_norm=g)))
    assert "vanishing_gradients" in rules_fired(f)
    g = make_stats().grad_norm.copy()
    g[40, 3] = 5e3
    assert "exploding_gradients" in rules_fired(R.gradient_health(FakeRun(make_stats(grad_norm=g))))
    assert R.gradient_health(FakeRun(make_stats())) == []


@pytest.mark.parametrize("ratio, rule", [(0.5, "update_ratio_high"), (0.2, None), (1e-7, "update_ratio_low"),
                                         (1e-2, None)])
def test_update_ratio(ratio, rule):
    u = np.where(np.array([k != "ReLU" for k in KINDS]), ratio, np.nan) * np.ones((100, 6))
    fired = rules_fired(R.gradient_health(FakeRun(make_stats(update_ratio=u))))
    assert fired == ({rule} if rule else set())


def test_loss_rules():
    flat = {"step": np.arange(100), "loss": np.full(100, 2.30)}
    assert rules_fired(R.loss_health(FakeRun(steps=flat))) == {"not_learning"}
    nan = {"step": np.arange(100), "loss": np.r_[np.linspace(2, 1, 50), [np.nan] * 50]}
    f = R.loss_health(FakeRun(steps=nan))
    assert f[0].rule == "loss_not_finite" and f[0].steps[0] == 50
    down_up = {"step": np.arange(100), "loss": np.r_[np.linspace(2.3, 0.2, 60), np.linspace(0.2, 1.0, 40)]}
    assert rules_fired(R.loss_health(FakeRun(steps=down_up))) == {"loss_diverging"}
    assert R.loss_health(FakeRun()) == []


def test_overfitting():
    rows = [{"train_loss": t, "valid_loss": v} for t, v in [(1.0, 0.9), (0.5, 0.6), (0.3, 0.65), (0.1, 0.8)]]
    assert rules_fired(R.overfitting(FakeRun(metrics=rows))) == {"overfitting"}
    rows[-1]["valid_loss"] = 0.62
    assert R.overfitting(FakeRun(metrics=rows)) == []


def test_findings_sorted_by_severity_and_round_trip_json(tmp_path):
    from convscope.diagnose import load_findings, save_findings

    nz = np.full((100, 6), 0.5)
    nz[:, 4] = np.linspace(0.4, 0.9, 100)
    run = FakeRun(make_stats(near_zero=nz), steps={"step": np.arange(100), "loss": np.full(100, 2.3)})
    findings = diagnose(run)
    # the flat loss at ln 10 with moving weights: not_learning and no_signal; the growing near-zero share: medium
    assert [f.severity for f in findings] == ["high", "high", "medium"]
    save_findings(tmp_path, findings)
    assert load_findings(tmp_path) == findings


def test_run_without_statistics_still_gets_loss_rules():
    assert rules_fired(diagnose(FakeRun(None, steps={"step": np.arange(50), "loss": np.full(50, 2.3)}))) == {
        "not_learning", "no_signal"}


def test_batch_size_advice_from_noise_scale_file(tmp_path):
    """B_simple = tr(Sigma)/|G|^2: with tr = 1000 x |G|^2 late in training, B_crit = 1000."""
    n = 40
    g2 = np.r_[np.full(n // 2, 1.0), np.full(n // 2, 0.01)]
    tr = np.r_[np.full(n // 2, 50.0), np.full(n // 2, 10.0)]
    np.savez(tmp_path / "noise_scale.npz", step=np.arange(n) * 10, g2=g2, tr_sigma=tr)

    class Run(FakeRun):
        path = tmp_path
        config = {"bs": 64}

    f = R.batch_size_advice(Run())
    assert f[0].rule == "batch_size_small" and "1,000" in f[0].evidence and f[0].steps == (200, 390)
    Run.config = {"bs": 8192}
    assert R.batch_size_advice(Run())[0].rule == "batch_size_large"
    Run.config = {"bs": 1024}
    assert R.batch_size_advice(Run())[0].rule == "batch_size_ok"


@dataclass
class ScaledRun(FakeRun):
    config: dict = field(default_factory=lambda: {"precision": "fp16"})


def test_steps_the_fp16_loss_scaler_skipped_are_not_exploding_gradients():
    g = make_stats().grad_norm.copy()
    g[:3, [0, 3]] = np.inf  # GradScaler's first steps at scale 65536 overflow and are skipped
    assert "exploding_gradients" in rules_fired(R.gradient_health(FakeRun(make_stats(grad_norm=g))))
    assert rules_fired(diagnose(ScaledRun(make_stats(grad_norm=g)))) == {"healthy"}
    assert rules_fired(diagnose(ScaledRun(make_stats(grad_norm=g), config={"loss_scaling": True}))) == {"healthy"}


def test_a_loss_scaler_that_keeps_skipping_is_a_finding():
    g = make_stats().grad_norm.copy()
    g[::5, 0] = np.inf  # one step in five overflows
    findings = R.gradient_health(ScaledRun(make_stats(grad_norm=g)))
    assert [f.rule for f in findings] == ["loss_scale_overflows"]
    assert findings[0].severity == "medium" and "20 of 100 recorded steps" in findings[0].evidence
