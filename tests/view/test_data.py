"""The run folder as the page's JSON (view/data.py), against the files read with numpy and json alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convscope.errors import RunError
from convscope.runs.discover import find_runs, runs_under
from convscope.view.data import finite_list, hist_json, run_json

SERIES = ("mean", "std", "near_zero", "negative", "abs_near_zero", "dead", "grad_norm", "update_ratio")


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def as_array(rows) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def test_run_json_holds_the_files_numbers(book_runs):
    run = book_runs["no-bn"]
    stats, steps = npz(run / "stats.npz"), npz(run / "steps.npz")
    d = json.loads(json.dumps(run_json(run), allow_nan=False))  # valid JSON: NaN is null
    assert d["steps"]["start"] == 0 and d["steps"]["n"] == len(steps["step"]) == 32
    assert d["steps"]["step"] == steps["step"].tolist()
    np.testing.assert_allclose(d["steps"]["loss"], steps["loss"], rtol=1e-5)
    np.testing.assert_allclose(d["steps"]["lr"], steps["lr"], rtol=1e-5)
    assert d["stats"]["layers"] == stats["layers"].tolist()
    assert d["stats"]["steps"] == stats["steps"].tolist() == list(range(0, 32, 2))
    for name in SERIES:
        got = as_array(d["stats"][name])
        np.testing.assert_array_equal(np.isnan(got), ~np.isfinite(stats[name]), err_msg=name)
        np.testing.assert_allclose(got, stats[name], rtol=1e-5, equal_nan=True, err_msg=name)
    assert [row["epoch"] for row in d["metrics"]] == [0]
    findings = json.loads((run / "findings.json").read_text())
    assert [f["rule"] for f in d["findings"]] == [f["rule"] for f in findings] and findings
    assert d["config"]["bn"] is False


def test_only_the_rows_after_what_the_page_has(book_runs):
    run = book_runs["no-bn"]
    stats = npz(run / "stats.npz")
    d = run_json(run, steps_have=10, rows_have=5, rows_last=int(stats["steps"][4]))
    assert d["steps"]["start"] == 10 and d["steps"]["step"] == list(range(10, 32))
    assert d["stats"]["append"] and d["stats"]["start"] == 5
    assert d["stats"]["steps"] == stats["steps"][5:].tolist()
    np.testing.assert_allclose(as_array(d["stats"]["mean"]), stats["mean"][5:], rtol=1e-5, equal_nan=True)
    # the page's rows no longer end where the file's do (thinned out, a resume): everything again
    again = run_json(run, rows_have=5, rows_last=int(stats["steps"][4]) + 1)
    assert not again["stats"]["append"] and again["stats"]["steps"] == stats["steps"].tolist()
    assert run_json(run, steps_have=1000)["steps"]["start"] == 0  # more than the file holds: from the start


def test_hist_json_is_one_layers_histograms(book_runs):
    run = book_runs["bn"]
    stats = npz(run / "stats.npz")
    i = stats["layers"].tolist().index("conv2.act")
    h = hist_json(run, "conv2.act")
    np.testing.assert_allclose(as_array(h["hist"]), stats["hist"][:, i], rtol=1e-3)
    assert h["range"] == stats["hist_range"][i].tolist() and h["bins"] == stats["hist"].shape[-1]
    few = hist_json(run, "conv2.act", max_rows=3)  # evenly spaced, the first and the last kept
    steps = stats["steps"].tolist()
    assert len(few["steps"]) == 3 and few["steps"][0] == steps[0] and few["steps"][-1] == steps[-1]
    assert steps[0] < few["steps"][1] < steps[-1]
    rows = [steps.index(s) for s in few["steps"]]
    np.testing.assert_allclose(as_array(few["hist"]), stats["hist"][rows, i], rtol=1e-3)
    with pytest.raises(KeyError):
        hist_json(run, "no-such-layer")


def test_finite_list_rounds_to_six_digits_and_nulls_what_is_not_finite():
    values = np.array([[0.123456789, -98765.4321, np.nan], [np.inf, 0.0, 1e-30]])
    assert finite_list(values) == [[float(f"{0.123456789:.6g}"), float(f"{-98765.4321:.6g}"), None],
                                   [None, 0.0, float(f"{1e-30:.6g}")]]


def test_find_runs_of_a_run_a_folder_and_a_missing_path(book_runs, tmp_path):
    a, b = book_runs["no-bn"], book_runs["bn"]
    assert find_runs(a) == [a]
    assert find_runs(a.parent) == sorted([a, b])
    study = tmp_path / "study"
    study.mkdir()
    for run in (a, b):
        shutil.copytree(run, study / run.name)
    (study / "lr_study.json").write_text("{}")
    assert [p.name for p in find_runs(study)] == ["bn", "no-bn"]
    (tmp_path / "outside").mkdir()
    shutil.copytree(a, tmp_path / "outside" / "elsewhere")
    (study / "link").symlink_to(tmp_path / "outside" / "elsewhere")
    assert "link" not in [p.name for p in runs_under(study)]  # leads outside the folder given
    with pytest.raises(RunError, match="does not exist"):
        find_runs(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match="no run folder is inside"):
        find_runs(empty)
