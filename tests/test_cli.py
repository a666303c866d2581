"""The command line: bad input gives one clear line and exit code 2, and nothing is written or lost."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from convscope.cli import app


@pytest.fixture
def runner(data_dir, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    return CliRunner()


def run_train(runner, tmp_path, *args):
    return runner.invoke(app, ["train", "--out", str(tmp_path / "runs"), "--name", "r", *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "0"], "lr must be a finite number > 0, got 0.0"),
        (["--lr", "-0.1"], "lr must be a finite number > 0, got -0.1"),
        (["--bs", "0"], "bs (batch size) must be a whole number >= 1, got 0"),
        (["--bs", "60001"], "bs 60001 is larger than the training set (60000 images)"),
        (["--epochs", "0"], "epochs must be a number > 0 (fractions allowed), got 0"),
        (["--dataset", "cifar"], "cifar"),
        (["--schedule", "linear"], "unknown schedule 'linear'"),
        (["--device", "tpu"], "device 'tpu'"),
        (["--channels", "8,x"], "--channels must be comma-separated whole numbers"),
        (["--data-root", "/nonexistent/folder"], "/nonexistent/folder"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_folder(runner, tmp_path, args, message):
    result = run_train(runner, tmp_path, *args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert message in err.replace("\n", " ")
    assert err.startswith("error:") and "Traceback" not in result.output
    assert not (tmp_path / "runs" / "r").exists(), "a failed start must leave no run folder"


def test_existing_run_folder_is_never_overwritten(runner, tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"precious": true}')
    result = run_train(runner, tmp_path)
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert (run / "config.json").read_text() == '{"precious": true}'
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_missing_data_without_network_is_one_line(tmp_path):
    """A real process: no data anywhere and no reachable mirror -> one line on stderr, exit 2."""
    env = dict(os.environ, CONVSCOPE_CACHE=str(tmp_path / "cache"), CONVSCOPE_DATA=str(tmp_path / "none"))
    proc = subprocess.run(
        [sys.executable, "-m", "convscope", "train", "--dataset", str(tmp_path / "no-such-folder"),
         "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_summary_command_prints_the_book_numbers(runner):
    result = runner.invoke(app, ["summary"])
    assert result.exit_code == 0
    # 5x5 first conv: 25 inputs per position into 8 channels; receptive field of the last conv is 65.
    assert "conv1.conv" in result.stdout and "30,542" in result.stdout


def test_summary_of_the_linear_head_counts_its_parameters(runner):
    result = runner.invoke(app, ["summary", "--head", "linear"])
    assert result.exit_code == 0
    # The book's 30,542 minus its last block (conv 64->10 3x3 + bias, BN weight and bias) plus the Linear
    # head on the 2x2x64 grid (+ bias) and its BatchNorm1d(10).
    conv5 = 64 * 10 * 9 + 10 + 2 * 10
    head = 256 * 10 + 10 + 2 * 10
    assert "head.fc" in result.stdout and f"{30_542 - conv5 + head:,}" in result.stdout


def test_train_with_fp16_writes_it_into_the_run(runner, tmp_path):
    import json

    import numpy as np

    result = run_train(runner, tmp_path, "--precision", "fp16", "--limit-train", "1024", "--bs", "256",
                       "--device", "cpu")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "r"
    config = json.loads((run / "config.json").read_text())
    assert (config["precision"], config["compile"]) == ("fp16", False)
    with np.load(run / "steps.npz") as steps:
        step, skipped = list(steps["step"]), steps["skipped"]
    assert step == [0, 1, 2, 3] and set(skipped) <= {0, 1}
    scaler = json.loads((run / "checkpoint" / "state.json").read_text())["scaler"]
    assert scaler["scale"] >= 1 and scaler["_growth_tracker"] == 4 - int(skipped.sum())  # no skip: 4 good steps


def test_train_offers_precision_and_compile(runner):
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "--precision" in result.output and "--compile" in result.output and "--no-compile" in result.output
