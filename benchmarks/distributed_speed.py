"""Samples/s of one process against N processes (torchrun, gloo on the CPU) at the same global batch.

Both train the book's simple_cnn (+BatchNorm) on real MNIST through convscope's Learner with
ActivationStats at its defaults, global batch 512, AdamW + 1cycle; the N-process run goes through
DistributedDataParallel with each process taking 1/N of every global batch. The threads are shared out
the same way in both: one process gets all cores, N processes get cores/N each. Contenders run
interleaved, each repeat in fresh processes. Last line:
`distributed_speed nproc=<N> ratio=<N-process samples/s / 1-process samples/s>`.

    python benchmarks/distributed_speed.py [--nproc 2] [--repeats 3] [--steps 117]

On a machine whose cores are already all busy with one process (this 2-core CPU), expect a ratio near
or below 1: the point of the multi-process path here is correct statistics, the gain comes with GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from _common import data_env, describe

GLOBAL_BS, LR = 512, 0.06


def worker(steps: int) -> None:
    from convscope.data.batches import DeviceBatches, normalize_images
    from convscope.data.sources import load_dataset
    from convscope.dist.context import current, init_from_env, shutdown
    from convscope.models.cnn import simple_cnn
    from convscope.stats.activations import ActivationStats
    from convscope.train import Callback, CancelFitException, Learner
    from convscope.train.ddp import DistributedTrainer

    info, device = init_from_env(torch.device("cpu"))
    data = load_dataset("mnist")
    x, _, _ = normalize_images(data.train_images)
    dl = DeviceBatches(x, data.train_labels, GLOBAL_BS // info.world_size, shuffle=True, drop_last=True, seed=0,
                       rank=info.rank, world_size=info.world_size)

    class Clock(Callback):  # times steps 10.. so that start-up (first DDP bucket build) is left out
        def after_step(self) -> None:
            if self.learn.train_iter == 10:
                self.start = time.perf_counter()
            if self.learn.train_iter == steps + 10:
                self.seconds = time.perf_counter() - self.start
                raise CancelFitException

    torch.manual_seed(0)
    clock = Clock()
    cbs = [clock, ActivationStats()] + ([DistributedTrainer(device)] if info.distributed else [])
    learn = Learner(simple_cnn(), dl, None, cbs=cbs)
    learn.create_opt()
    learn.fit_one_cycle(-(-(steps + 10) // len(dl)), LR)
    if current().is_main:
        print(json.dumps({"samples_per_s": steps * GLOBAL_BS / clock.seconds}), flush=True)
    shutdown()


def run(nproc: int, steps: int) -> float:
    env = data_env()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env["OMP_NUM_THREADS"] = str(threads)
    if nproc == 1:
        cmd = [sys.executable, __file__, "--worker", "--steps", str(steps)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
               "--worker", "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{nproc}-process worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100, help="timed optimizer steps per run (after 10 warm-up)")
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.steps)
        return
    results: dict[int, list[float]] = {1: [], args.nproc: []}
    for r in range(args.repeats):
        for n in ([1, args.nproc] if r % 2 == 0 else [args.nproc, 1]):
            sps = run(n, args.steps)
            results[n].append(sps)
            print(f"repeat {r + 1} {n} process(es) {sps:,.0f} samples/s", flush=True)
    for n, vals in results.items():
        print(f"{n} process(es) samples/s: {describe(vals)}")
    ratio = statistics.median(results[args.nproc]) / statistics.median(results[1])
    print(f"distributed_speed nproc={args.nproc} ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
