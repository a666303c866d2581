"""Shared by the benchmark scripts: data location, fresh-process runs, malloc settings, summaries."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

# glibc's malloc trims and re-faults the heap between batches in some runs, which made identical runs
# differ by up to 30% here; pinning the thresholds removes that noise for every contender alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def data_env() -> dict[str, str]:
    env = dict(os.environ, **MALLOC_ENV)
    env.setdefault("CONVSCOPE_DATA", str(DEFAULT_DATA))
    return env


def run_worker(script: str, args: list[str]) -> dict:
    """Run `python script args` in a fresh process; its last stdout line is a JSON result."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=data_env())
    if proc.returncode != 0:
        sys.exit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):,.1f}  min {min(values):,.1f}  max {max(values):,.1f}"
