"""`convscope lr-find`: bad input is one line, exit 2 and no run folder; a real run writes its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from convscope.cli import app


@pytest.fixture
def runner(data_dir, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_DATA", str(data_dir))
    return CliRunner()


def lr_find(runner, tmp_path, *args):
    return runner.invoke(app, ["lr-find", "--out", str(tmp_path / "runs"), "--name", "r", *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start-lr", "1", "--end-lr", "0.1"], "start_lr must be below end_lr, got start_lr=1.0 >= end_lr=0.1"),
        (["--start-lr", "0.1", "--end-lr", "0.1"], "start_lr must be below end_lr"),
        (["--start-lr", "0"], "start_lr must be a finite number > 0, got 0.0"),
        (["--end-lr", "-1"], "end_lr must be a finite number > 0, got -1.0"),
        (["--num-it", "4"], "num_it must be a whole number >= 5 (steps in the sweep), got 4"),
        (["--repeats", "0"], "repeats must be a whole number >= 1, got 0"),
        (["--bs", "0"], "bs (batch size) must be a whole number >= 1, got 0"),
        (["--bs", "60001"], "bs 60001 is larger than the training set (60000 images)"),
        (["--device", "tpu"], "device 'tpu'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_folder(runner, tmp_path, args, message):
    result = lr_find(runner, tmp_path, *args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "Traceback" not in result.output
    assert message in err.replace("\n", " ")
    assert not (tmp_path / "runs" / "r").exists(), "a failed start must leave no run folder"


def test_an_existing_run_folder_is_refused_before_the_sweep(runner, tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"precious": true}')
    result = lr_find(runner, tmp_path)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]
    assert (run / "config.json").read_text() == '{"precious": true}'


def test_writes_json_png_and_prints_the_table(runner, tmp_path):
    result = lr_find(runner, tmp_path, "--num-it", "25", "--repeats", "2", "--start-lr", "1e-5", "--end-lr", "3",
                    "--bs", "128")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "r"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "lr_find.json", "lr_find.png"]
    data = json.loads((run / "lr_find.json").read_text())
    assert len(data["sweeps"]) == 2
    for sw in data["sweeps"]:
        lrs = np.array(sw["lrs"])
        i = np.arange(len(lrs))
        np.testing.assert_allclose(lrs, 1e-5 * (3 / 1e-5) ** (i / 24), rtol=1e-12)  # a prefix if it stopped
    for name in ("minimum", "steep", "valley", "slide", "edge"):
        values = [sw["edge"]["lr"] if name == "edge" else sw["suggestions"][name]["lr"] for sw in data["sweeps"]]
        assert data["suggestions"][name]["min"] == min(values)
        assert data["suggestions"][name]["max"] == max(values)
        assert name in result.stdout
    rec = data["recommended_lr_max"]
    assert rec > 0 and data["reasoning"].startswith(f"Recommended lr_max {rec:.3g}")
    assert f"recommended lr_max for fit_one_cycle: {rec:.3g}" in result.stdout
    assert (run / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((run / "config.json").read_text())
    assert config["command"] == "lr-find" and config["lr_find"]["num_it"] == 25 and config["bs"] == 128
