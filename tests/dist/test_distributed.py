"""Multi-process training on torch.distributed (gloo, 2 processes on this CPU), started with torchrun.

What is checked, each against an independent computation:
- the statistics of the first step, combined over 2 ranks with cross-rank BatchNorm, equal plain PyTorch
  statistics of the same global batch in one process (and so do the weights after the step);
- a 2-process MNIST epoch through `convscope train --nproc 2` reaches >= 98.0%, and only rank 0 writes;
- a rank that raises mid-epoch ends the whole job within 60 s, non-zero, and the run resumes on 1 process
  to the same step count, with no step recorded twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convscope.data.batches import normalize_images
from convscope.models.cnn import simple_cnn
from convscope.stats.hooks import select_modules
from convscope.train.learner import adamw

HERE = Path(__file__).resolve().parent


def torchrun(script: str, *args: str, data_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, CONVSCOPE_TEST_DATA=str(data_dir), CONVSCOPE_DATA=str(data_dir), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(HERE / script),
           *args]
    # A session of its own: the interrupt test signals the whole process group, as a terminal's Ctrl-C does.
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True)


def plain_first_step(mnist, global_bs: int) -> dict[str, np.ndarray]:
    """One process, plain PyTorch: the same first global batch, forward hooks, one AdamW step."""
    x, _, _ = normalize_images(mnist.train_images)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[:global_bs]
    xb, yb = x[order], mnist.train_labels[order]
    torch.manual_seed(0)
    model = simple_cnn()
    layers = select_modules(model)
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o.detach())) for n, m in layers]
    opt = adamw(model.parameters(), lr=1e-3)
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    grad_norm = []
    for _, m in layers:
        own = [p.grad for p in m.parameters(recurse=False)]
        grad_norm.append(float(torch.stack([g.pow(2).sum() for g in own]).sum().sqrt()) if own else np.nan)
    opt.step()
    for h in handles:
        h.remove()
    ref: dict[str, list] = {"mean": [], "std": [], "near_zero": [], "dead": [], "hist": [], "negative": [],
                            "abs_near_zero": []}
    for name, module in layers:
        o = outputs[name].double()
        ref["mean"].append(float(o.mean()))
        ref["std"].append(float(o.std()))
        ref["near_zero"].append(float((o < 0.05).double().mean()))
        per_channel = o.amax(dim=0).reshape(o.shape[1], -1).amax(dim=1) if o.ndim > 1 else o.amax().view(1)
        ref["dead"].append(float((per_channel <= 0).double().mean()))
        ref["negative"].append(float((o < 0).double().mean()))
        ref["abs_near_zero"].append(float((o.abs() <= 0.05).double().mean()))
        # the default ranges: fastai's [0, 10] after a ReLU, [-5, 5] elsewhere
        lo, hi = (0.0, 10.0) if isinstance(module, torch.nn.ReLU) else (-5.0, 5.0)
        ref["hist"].append(torch.histc(o.float(), 40, lo, hi).numpy())
    out = {k: np.asarray(v) for k, v in ref.items()}
    out["grad_norm"] = np.asarray(grad_norm)
    out["weights"] = {k: v.numpy() for k, v in model.state_dict().items()}
    return out


def test_two_rank_statistics_equal_one_process_on_the_same_global_batch(tmp_path, mnist, data_dir):
    proc = torchrun("stats_worker.py", str(tmp_path), "512", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = np.load(tmp_path / "ddp.npz")
    ref = plain_first_step(mnist, 512)
    assert list(ddp["steps"]) == [0]
    np.testing.assert_allclose(ddp["mean"], ref["mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ddp["std"], ref["std"], rtol=1e-4)
    # Shares of >= 100k values: a value within float rounding of the 0.05 edge may fall either side when the
    # convolution runs on half batches, so allow a handful of values (2e-5 of 262k is 5).
    np.testing.assert_allclose(ddp["near_zero"], ref["near_zero"], atol=2e-5)
    np.testing.assert_allclose(ddp["dead"], ref["dead"], atol=0)
    np.testing.assert_allclose(ddp["negative"], ref["negative"], atol=2e-5)
    np.testing.assert_allclose(ddp["abs_near_zero"], ref["abs_near_zero"], atol=2e-5)
    # Counts of 400k values per layer: a value on a bin edge may land one bin over after float rounding.
    assert np.abs(ddp["hist"] - ref["hist"]).max() <= 2
    np.testing.assert_allclose(ddp["grad_norm"], ref["grad_norm"], rtol=1e-4)
    # After one AdamW step of lr 1e-3. atol is 1% of one step: the conv biases in front of a BatchNorm
    # get a gradient that is zero up to rounding, which Adam's normalisation magnifies to a few 1e-6.
    for key, value in ref["weights"].items():
        np.testing.assert_allclose(ddp[f"w.{key}"], value, rtol=1e-4, atol=1e-5, err_msg=key)
    # Dead channels combine with MAX over ranks: one channel dead on both ranks, one on rank 0 only.
    dead_count, elements = ddp["dead_check"]
    assert dead_count == 1 and elements == 60
    # Noise scale pair (each rank with its own BatchNorm): plain gradients of the two half batches.
    g2_small, g2_big, b_small, b_big = ddp["gns"]
    halves = plain_half_batch_gradients(mnist, 512)
    assert (b_small, b_big) == (256, 512)
    assert g2_small == pytest.approx(np.mean([float(g.square().sum()) for g in halves]), rel=1e-4)
    assert g2_big == pytest.approx(float(((halves[0] + halves[1]) / 2).square().sum()), rel=1e-4)


def plain_half_batch_gradients(mnist, global_bs: int) -> list[torch.Tensor]:
    """Flattened gradient of each rank's half of the first global batch, in one plain process."""
    x, _, _ = normalize_images(mnist.train_images)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[:global_bs]
    grads = []
    for half in order.chunk(2):
        torch.manual_seed(0)
        model = simple_cnn()
        F.cross_entropy(model(x[half]), mnist.train_labels[half]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return grads


def test_two_process_mnist_epoch_through_the_cli(tmp_path, data_dir):
    env = dict(os.environ, CONVSCOPE_DATA=str(data_dir))
    proc = subprocess.run([sys.executable, "-m", "convscope", "train", "--nproc", "2", "--bs", "256",
                           "--out", str(tmp_path), "--name", "ddp"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes x batch 256 = global batch 512" in proc.stdout
    assert proc.stdout.count("run written to") == 1  # rank 0 alone reports
    run = tmp_path / "ddp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["world_size"] == 2 and config["data"]["global_bs"] == 512
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["accuracy"] >= 0.98
    steps = np.load(run / "steps.npz")
    assert list(steps["step"]) == list(range(60000 // 512))  # the global batch's step count
    stats = np.load(run / "stats.npz")
    assert len(stats["steps"]) > 0 and (run / "report.html").exists()


def test_a_failing_rank_ends_the_job_quickly_and_the_run_resumes_on_one_process(tmp_path, data_dir):
    run = tmp_path / "crash"
    proc = torchrun("train_worker.py", str(run), "1", "1", "50", data_dir=data_dir)
    ended = time.time()
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr
    failed_at = float((run / "failed_at").read_text())
    assert ended - failed_at < 60, f"the job took {ended - failed_at:.0f} s to end after the failure"
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["train_iter"] == 40  # checkpoints every 20 steps: the last one before the failure

    env = dict(os.environ, CONVSCOPE_DATA=str(data_dir))
    resumed = subprocess.run([sys.executable, "-m", "convscope", "train", "--resume", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = np.load(run / "steps.npz")
    assert list(steps["step"]) == list(range(60000 // 512))  # same global batch on 1 process: no gap, no repeat
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["accuracy"] >= 0.97


def test_ctrl_c_stops_every_rank_at_the_same_step_and_the_run_resumes(tmp_path, data_dir):
    run = tmp_path / "ctrl-c"
    proc = torchrun("train_worker.py", str(run), "1", "interrupt", "50", data_dir=data_dir)
    assert proc.returncode != 0
    # The ranks agree on a stop every 8 steps (dist/ddp.py): both stop after step 56, the first check
    # after the signal, and rank 0 checkpoints there.
    assert "rank 0 stopped at step 56" in proc.stdout and "rank 1 stopped at step 56" in proc.stdout, proc.stdout
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["train_iter"] == 56
    env = dict(os.environ, CONVSCOPE_DATA=str(data_dir))
    resumed = subprocess.run([sys.executable, "-m", "convscope", "train", "--resume", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(np.load(run / "steps.npz")["step"]) == list(range(60000 // 512))
