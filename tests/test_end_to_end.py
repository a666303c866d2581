"""Real training runs on real MNIST through the public entry point, checked from the files on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from convscope import TrainConfig, load_run
from convscope.experiments import run_training
from convscope.models.cnn import simple_cnn


def test_book_setting_one_epoch_reaches_98_percent_and_writes_the_run(data_dir, tmp_path):
    """The book: simple_cnn + BatchNorm, bs 512, fit_one_cycle(1, 0.06) -> 98.64%. We require >= 98.0%."""
    cfg = TrainConfig(data_root=str(data_dir), out=str(tmp_path), name="book", device="cpu")
    result = run_training(cfg)
    run = load_run(result.run_dir)
    assert run.final_accuracy >= 0.98
    assert sorted(p.name for p in result.run_dir.iterdir()) == [
        "checkpoint", "config.json", "findings.json", "metrics.jsonl", "report.html", "stats.npz", "steps.npz"]
    # steps.npz: one row per optimizer step (60000 // 512 = 117), readable with numpy alone.
    with np.load(result.run_dir / "steps.npz") as steps:
        assert steps["loss"].shape == (117,) and steps["lr"].max() == pytest.approx(0.06, rel=1e-3)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["bs"] == 512 and config["versions"]["torch"] == torch.__version__
    # The checkpoint reproduces the reported accuracy in a fresh model (independent evaluation).
    model = simple_cnn()
    model.load_state_dict(load_file(result.run_dir / "checkpoint" / "model.safetensors"))
    model.eval()
    data = result.learn.valid_data
    with torch.no_grad():
        correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in data)
    assert correct / 10_000 == pytest.approx(run.final_accuracy, abs=1e-4)


@pytest.mark.slow
def test_book_setting_five_epochs_reaches_99_percent(data_dir, tmp_path):
    """The book reports 99.12% for fit_one_cycle(5, 0.1) (the README's second example). We require >= 99.0%."""
    cfg = TrainConfig(data_root=str(data_dir), out=str(tmp_path), name="book5", epochs=5, lr=0.1, device="cpu")
    result = run_training(cfg)
    assert load_run(result.run_dir).final_accuracy >= 0.99


@pytest.mark.slow
def test_fast_recipe_reaches_99_percent_with_its_statistics(data_dir, tmp_path):
    """`--recipe fast` (3 epochs, centre 20x20 crop, Linear head, conv1/conv2 frozen part-way): >= 99.0% on
    the test set, measured here by a fresh model loaded from the checkpoint on test images cropped and
    normalised by hand, not by the run's own number or data path; the statistics were recorded."""
    import json

    from convscope.data.sources import load_dataset
    from convscope.experiments.recipes import recipe_settings

    cfg = TrainConfig(**recipe_settings("fast"), data_root=str(data_dir), out=str(tmp_path), name="fast", device="cpu")
    result = run_training(cfg)
    model = simple_cnn(head="linear", image_size=20)
    model.load_state_dict(load_file(result.run_dir / "checkpoint" / "model.safetensors"))
    model.eval()
    norm = json.loads((result.run_dir / "config.json").read_text())["data"]["normalize"]
    test = load_dataset("mnist", root=data_dir)
    x = (test.test_images[:, 4:24, 4:24].float().div(255).unsqueeze(1) - norm["mean"]) / norm["std"]
    with torch.no_grad():
        correct = (model(x).argmax(1) == test.test_labels).sum().item()
    assert correct / 10_000 >= 0.99
    assert load_run(result.run_dir).activation_stats.n_steps > 0
