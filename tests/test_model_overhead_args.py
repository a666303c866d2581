"""benchmarks/model_overhead.py refuses settings under which its repeats would hold different rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "model_overhead.py"


@pytest.mark.parametrize(("args", "message"), [
    (["--turns", "4"], "--turns needs --chunk"),
    (["--turns", "3", "--chunk", "16"], "--turns x --chunk must be a multiple of 64"),
])
def test_impossible_turns_are_refused_in_one_line(args, message, tmp_path):
    src = str(BENCH.parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not any(tmp_path.iterdir())  # refused before anything ran or was written
