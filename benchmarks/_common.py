"""Shared by the benchmark scripts: data location, fresh-process runs, malloc settings, summaries."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
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


# ----------------------------------------------------------------- the bare PyTorch baseline
# The book recipe written as plainly as possible (torch's AdamW + OneCycleLR, no callbacks, no statistics):
# the yardstick convscope is measured against in train_speed.py, time_to_accuracy.py and recipe_search.py.

def bare_optimizer(model, lr: float, total_steps: int):
    """AdamW + OneCycleLR set up as convscope's fit_one_cycle(lr) defaults: warm-up 25% from lr/25, end at
    lr/1e5 (torch divides its start by final_div_factor: 25 * 4000 = 1e5), beta1 cycling 0.95-0.85-0.95."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.95, 0.99), eps=1e-5, weight_decay=0.01, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=total_steps, pct_start=0.25, div_factor=25,
                                                final_div_factor=4000, base_momentum=0.85, max_momentum=0.95)
    return opt, sched


def bare_epoch(model, opt, sched, x, y, bs: int, gen, max_steps: int | None = None) -> int:
    """One shuffled epoch (drop_last) of plain training; stops early after `max_steps`. Returns steps taken."""
    import torch
    import torch.nn.functional as F

    model.train()
    perm = torch.randperm(len(x), generator=gen)
    steps = len(x) // bs if max_steps is None else min(len(x) // bs, max_steps)
    for i in range(steps):
        idx = perm[i * bs : (i + 1) * bs]
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return steps


def bare_accuracy(model, x, y, bs: int = 2000) -> float:
    import torch

    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum()) for i in range(0, len(x), bs))
    return correct / len(x)


def per_call_us(fn, calls: int = 200, rounds: int = 1) -> float:
    """Microseconds per call of fn(), after 5 untimed calls: the best of `rounds` timings of `calls` calls."""
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best
