"""lr-study and bs-sweep folders as runs: each schedule or batch size is a run folder inside the study, and
report, diagnose, view and compare take the study folder (each of its runs a comparable run)."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from convscope.cli import app
from convscope.experiments.lr_study import schedule_for

SCHEDULES = ("constant-high", "constant-low", "warmup-constant", "one-cycle")


@pytest.fixture(scope="module")
def lr_study_dir(data_dir, tmp_path_factory) -> Path:
    from convscope import TrainConfig
    from convscope.experiments.lr_study import run_lr_study

    cfg = TrainConfig(data_root=str(data_dir), bn=False, bs=256, lr=0.06, limit_train=256 * 6, device="cpu",
                      out=str(tmp_path_factory.mktemp("studies")), name="lr")
    run_dir, _ = run_lr_study(cfg)
    return run_dir


@pytest.fixture(scope="module")
def bs_sweep_dir(data_dir, tmp_path_factory) -> Path:
    from convscope.experiments.bs_sweep import SweepConfig, run_sweep

    cfg = SweepConfig(batch_sizes=(256, 512), data_root=str(data_dir), limit_train=1024, device="cpu", threads=1,
                      out=str(tmp_path_factory.mktemp("studies")), name="bs")
    return run_sweep(cfg).path


def embedded(page: Path) -> dict:
    text = page.read_text()
    blob = re.search(r'<script type="application/json" id="convscope-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(blob.replace("<\\/", "</"))


def test_each_schedule_is_a_run_folder_with_its_own_lr(lr_study_dir):
    assert sorted(p.name for p in lr_study_dir.iterdir() if p.is_dir()) == sorted(SCHEDULES)
    for name in SCHEDULES:
        run = lr_study_dir / name
        with np.load(run / "steps.npz") as steps, np.load(run / "stats.npz") as stats:
            assert len(steps["step"]) == 6 and stats["steps"].tolist() == list(range(6))
            lr = steps["lr"]
        # the lr it trained at is its schedule's curve (as tests/test_lr_study.py checks the study's rows)
        curve = schedule_for(name, 0.06)["lr"]
        np.testing.assert_allclose(lr, [curve(i / (len(lr) - 1)) for i in range(len(lr))], rtol=1e-9)
        if name == "constant-low":
            np.testing.assert_allclose(lr, 0.06 / 25)
        assert json.loads((run / "config.json").read_text())["lr_study_schedule"] == name
    rows = json.loads((lr_study_dir / "lr_study.json").read_text())["rows"]
    for row in rows:  # the study's own table and the run folders agree on accuracy
        lines = (lr_study_dir / row["schedule"] / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        assert metrics[-1]["accuracy"] == pytest.approx(row["accuracy"])


def test_diagnose_compare_and_view_take_an_lr_study_folder(lr_study_dir, tmp_path):
    result = CliRunner().invoke(app, ["diagnose", str(lr_study_dir)])
    assert result.exit_code == 0, result.output
    for name in SCHEDULES:
        assert (lr_study_dir / name / "findings.json").is_file()
        assert f"written to {lr_study_dir / name / 'findings.json'}" in result.output.replace("\n", "")
    page = tmp_path / "lr.html"
    result = CliRunner().invoke(app, ["compare", str(lr_study_dir), "-o", str(page)])
    assert result.exit_code == 0, result.output
    data = embedded(page)
    assert sorted(r["name"] for r in data["runs"]) == sorted(SCHEDULES)
    assert {r["study"] for r in data["runs"]} == {"lr-study"}
    for r in data["runs"]:
        with np.load(lr_study_dir / r["name"] / "steps.npz") as steps:
            np.testing.assert_allclose(data["data"][r["id"]]["steps"]["lr"], steps["lr"], rtol=1e-5)

    from convscope.view.server import make_server

    server = make_server([str(lr_study_dir.parent)], 0)  # the --out folder holding the study
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        listed = json.loads(urllib.request.urlopen(server.url + "api/runs", timeout=30).read())["runs"]
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(r["name"] for r in listed) == sorted(f"lr/{s}" for s in SCHEDULES)
    assert {r["study"] for r in listed} == {"lr-study"}


@pytest.mark.slow  # a sweep runs each batch size in its own process: ~25 s here
def test_diagnose_compare_and_view_take_a_bs_sweep_folder(bs_sweep_dir, tmp_path):
    result = CliRunner().invoke(app, ["diagnose", str(bs_sweep_dir)])
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in bs_sweep_dir.glob("*/findings.json")) == ["bs256", "bs512"]
    page = tmp_path / "bs.html"
    result = CliRunner().invoke(app, ["compare", str(bs_sweep_dir), "-o", str(page)])
    assert result.exit_code == 0, result.output
    data = embedded(page)
    assert [r["name"] for r in data["runs"]] == ["bs256", "bs512"]
    steps = [data["data"][r["id"]]["steps"]["n"] for r in data["runs"]]
    assert steps == [1024 // 256, 1024 // 512]  # one epoch each, the last short batch dropped
    assert [data["data"][r["id"]]["config"]["bs"] for r in data["runs"]] == [256, 512]


@pytest.mark.slow
def test_report_of_a_study_writes_each_runs_report_and_the_comparison(lr_study_dir):
    pytest.importorskip("plotly")
    result = CliRunner().invoke(app, ["report", str(lr_study_dir)])
    assert result.exit_code == 0, result.output
    for name in SCHEDULES:
        assert (lr_study_dir / name / "report.html").stat().st_size > 10_000
    assert sorted(r["name"] for r in embedded(lr_study_dir / "compare.html")["runs"]) == sorted(SCHEDULES)
