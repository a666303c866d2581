"""Where the tests find the real data, and what a run without it does: in CI it fails at once with one line;
elsewhere the tests that need it skip, and one line at the end counts them. Checked on a real pytest run of
two data tests in a subprocess, pointed at folders that do not exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_TESTS = ["tests/data/test_idx.py", "-k", "real_files_have_documented_shapes"]  # mnist and fashion-mnist


def pytest_run(**env: str) -> subprocess.CompletedProcess:
    """pytest on DATA_TESTS with `env` on top of this environment, less the variables these tests set."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "CONVSCOPE_TEST_DATA", "CONVSCOPE_DATA")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *DATA_TESTS],
                          cwd=REPO, env={**environ, **env}, capture_output=True, text=True)


@pytest.mark.parametrize("variable", ["CONVSCOPE_TEST_DATA", "CONVSCOPE_DATA"])
def test_in_ci_missing_data_fails_the_run_with_one_line(tmp_path: Path, variable: str) -> None:
    nowhere = tmp_path / "nowhere"
    proc = pytest_run(CI="true", **{variable: str(nowhere)})
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Exit: CI=true and real test data missing: the data folder {nowhere} (named by "
                               f"{variable}) does not exist; ")
    assert "set CONVSCOPE_TEST_DATA or CONVSCOPE_DATA" in lines[0]


def test_test_data_wins_over_convscope_data(tmp_path: Path) -> None:
    proc = pytest_run(CI="true", CONVSCOPE_TEST_DATA=str(tmp_path / "a"), CONVSCOPE_DATA=str(tmp_path / "b"))
    assert f"the data folder {tmp_path / 'a'} (named by CONVSCOPE_TEST_DATA)" in proc.stderr, proc.stderr


def test_elsewhere_missing_data_skips_and_says_so_once(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    proc = pytest_run(CONVSCOPE_TEST_DATA=str(nowhere))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = [line for line in proc.stdout.splitlines() if "real test data missing" in line]
    assert len(summary) == 1 and "2 skipped" in proc.stdout, proc.stdout
    assert summary[0].startswith(f"2 tests skipped, real test data missing: the data folder {nowhere} (named by "
                                 "CONVSCOPE_TEST_DATA) does not exist; ")


def test_the_real_data_is_found_here(data_dir: Path) -> None:
    # The run this test belongs to found the data, so the two data tests run (and pass) in a subprocess too.
    proc = pytest_run(CONVSCOPE_TEST_DATA=str(data_dir))
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout
