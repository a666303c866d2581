"""`convscope bs-sweep`: input checks, lr scaling, the recommendation, and a tiny real sweep checked from disk."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from convscope.cli import app
from convscope.data.batches import normalize_images
from convscope.experiments.bs_sweep import markdown_table, recommend, scaled_lr
from convscope.models.cnn import simple_cnn


@pytest.fixture
def runner(data_dir, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    return CliRunner()


def sweep(runner, tmp_path, *args):
    return runner.invoke(app, ["bs-sweep", "--out", str(tmp_path / "runs"), "--name", "s", *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bs", ""], "--bs needs at least one batch size"),
        (["--bs", "64,abc"], "--bs must be comma-separated whole numbers"),
        (["--bs", "64,0"], "batch sizes must be whole numbers >= 1, got 0"),
        (["--bs", "-64"], "batch sizes must be whole numbers >= 1, got -64"),
        (["--bs", "64,64"], "batch sizes must differ"),
        (["--bs", "64,60001"], "batch sizes [60001] are larger than the training set (60000 images)"),
        (["--bs", "64,512", "--limit-train", "500"], "batch sizes [512] are larger than the training set (500 images) "
                                                      "after --limit-train"),
        (["--lr-scaling", "cubic"], "unknown lr scaling 'cubic'"),
        (["--lr", "0"], "lr must be a finite number > 0"),
        (["--base-bs", "0"], "base_bs must be a whole number >= 1"),
        (["--epochs", "0"], "epochs must be a number > 0"),
        (["--dataset", "cifar"], "cifar"),
        (["--device", "tpu"], "device 'tpu'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_folder(runner, tmp_path, args, message):
    result = sweep(runner, tmp_path, *args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and message in err.replace("\n", " ")
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "s").exists(), "a failed start must leave no sweep folder"


def test_existing_sweep_folder_is_never_overwritten(runner, tmp_path):
    folder = tmp_path / "runs" / "s"
    folder.mkdir(parents=True)
    result = sweep(runner, tmp_path, "--bs", "512")
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert list(folder.iterdir()) == []


def test_lr_scaling_rules():
    assert scaled_lr(0.06, 2048, 512, "none") == 0.06
    assert scaled_lr(0.06, 2048, 512, "linear") == pytest.approx(0.24)
    assert scaled_lr(0.06, 128, 512, "sqrt") == pytest.approx(0.03)


def fake_row(bs, accuracy, seconds, b_late=1000.0):
    return {"bs": bs, "lr": 0.06, "steps": 60000 // bs, "accuracy": accuracy, "train_seconds": seconds,
            "train_cpu_seconds": seconds,
            "samples_per_s": 60000 / seconds, "peak_mem_mb": 500.0 + bs / 10, "final_train_loss": 0.1,
            "steps_to_target": None, "b_simple_early": 200.0, "b_simple_late": b_late}


def test_recommendation_picks_the_fastest_setting_within_half_a_point_of_the_best():
    rows = [fake_row(64, 0.990, 30.0), fake_row(256, 0.988, 12.0), fake_row(1024, 0.970, 5.0)]
    for row, steps in zip(rows, (400, 100, 80)):
        row["steps_to_target"] = steps
    lines = recommend(rows, 800.0, torch.device("cpu"))
    text = " ".join(lines)
    assert "400 (bs 64) -> 100 (bs 256) -> 80 (bs 1024)" in text and "x0.25, x0.80" in text
    assert "Recommendation: bs 256" in text  # 64 is best, 256 is within 0.5 points and faster, 1024 is not
    assert "~800 in the second half" in text and "below the critical batch size" in text
    assert "Memory is not the limit up to the largest batch tried (bs 1024)" in text and "602 MiB" in text
    table = markdown_table(rows)
    assert table.count("\n") == 2 + len(rows) and "| 256 | 0.06 | 234 | 98.80% | 12.0 | 12.0 | 5,000 |" in table


def first_loss_from_seed(mnist, n, bs, seed=42):
    """Loss of the first batch of a run on the first `n` images with `seed`, recomputed from scratch: the
    seed's initial weights on the first `bs` images of the seed's shuffled order (train mode, as in training)."""
    x, _, _ = normalize_images(mnist.train_images[:n])
    y = mnist.train_labels[:n]
    torch.manual_seed(seed)
    model = simple_cnn()
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:bs]
    with torch.no_grad():
        return F.cross_entropy(model.train()(x[idx]), y[idx]).item()


def test_tiny_sweep_writes_folder_json_figure_and_runs(runner, tmp_path, mnist):
    """Two sizes on the first 2,048 training images (hidden --limit-train), linear lr scaling; checked from the
    files the sweep wrote and from an independent recomputation."""
    result = sweep(runner, tmp_path, "--bs", "128,256", "--limit-train", "2048", "--lr-scaling", "linear",
                   "--base-bs", "256", "--gns-every", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "s"
    assert sorted(p.name for p in folder.iterdir()) == ["bs128", "bs256", "bs_sweep.json", "bs_sweep.png"]
    assert (folder / "bs_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((folder / "bs_sweep.json").read_text())
    rows = {r["bs"]: r for r in report["settings"]}
    assert "Recommendation: bs" in result.stdout and "Critical batch size" in result.stdout
    for bs, steps, lr in ((128, 16, 0.03), (256, 8, 0.06)):
        row, run = rows[bs], folder / f"bs{bs}"
        config = json.loads((run / "config.json").read_text())
        assert config["bs"] == bs and config["lr"] == pytest.approx(lr) and config["seed"] == 42
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert row["accuracy"] == pytest.approx(metrics[-1]["accuracy"])
        with np.load(run / "steps.npz") as s:
            assert row["steps"] == steps == len(s["loss"])  # 2048 // bs batches
            # Both settings start from the seed's weights: their first losses match a from-scratch model.
            assert s["loss"][0] == pytest.approx(first_loss_from_seed(mnist, 2048, bs), rel=1e-5)
            assert row["final_train_loss"] == pytest.approx(float(np.mean(s["loss"][-max(1, steps // 10):])))
        with np.load(run / "noise_scale.npz") as ns:
            assert ns["step"].tolist() == list(range(0, steps, 2))
            assert (ns["b_big"] == bs).all() and (ns["b_small"] == bs // 2).all()
        assert row["samples"] == steps * bs
        assert row["samples_per_s"] == pytest.approx(row["samples"] / row["train_seconds"])
        assert row["peak_mem_mb"] > 100  # the MNIST tensors alone are ~200 MB
        assert row["gns_measurements"] == len(range(0, steps, 2))
    b_crit = report["critical_batch_size"]  # strict JSON: a value that could not be estimated is null
    assert b_crit is None or (math.isfinite(b_crit) and b_crit > 0)
    check_sweep_figure(folder, report)


def check_sweep_figure(folder, report) -> None:
    """The figure's x axes span the sizes tried, even for a noise scale far beyond them (named at the edge);
    a noise-scale curve that stops early says where."""
    from convscope.experiments.bs_sweep import sweep_figure

    fig = sweep_figure(folder, report["settings"], 16_770.0, report["loss_target"])
    ax_acc = fig.axes[0]
    lo, hi = ax_acc.get_xlim()
    assert 128 / 1.5 <= lo < 128 and 256 < hi <= 256 * 1.5
    assert [t.get_text() for t in ax_acc.texts] == ["second half: B_simple ~16,770 ->"]
    with np.load(folder / "bs128" / "noise_scale.npz") as ns:
        arrays = dict(ns)
    arrays["g2"][4:] = -1.0  # the |G|^2 estimate <= 0 from the 5th measurement on, as late in a real run
    np.savez(folder / "bs128" / "noise_scale.npz", **arrays)
    g2_mean = np.convolve(arrays["g2"], np.ones(3) / 3, mode="same")  # the curve's 3-point window
    last = int(np.flatnonzero(g2_mean > 0)[-1])
    pct = round(100 * arrays["step"][last] / 16)
    fig = sweep_figure(folder, report["settings"], 16_770.0, report["loss_target"])
    (ax_gns,) = [ax for ax in fig.axes if ax.get_title().startswith("gradient noise scale")]
    assert f"bs 128: no B_simple from {pct}% on" in [t.get_text() for t in ax_gns.texts]
    assert "undefined" in ax_gns.get_xlabel()


def test_a_diverging_setting_is_reported_not_fatal(runner, tmp_path):
    result = sweep(runner, tmp_path, "--bs", "256", "--lr", "100000", "--limit-train", "2048", "--device", "cpu")
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "runs" / "s" / "bs_sweep.json").read_text())["settings"][0]
    # which turns non-finite first, the loss or a gradient, depends on float rounding (the thread count)
    assert any(f"the {what} became" in row["diverged"] for what in ("loss", "gradient"))
    assert row["accuracy"] is None
    assert "Every setting diverged" in result.stdout
