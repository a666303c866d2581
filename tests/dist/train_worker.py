"""Run under torchrun by test_distributed.py: a real MNIST training run, optionally failing on one rank.

    python -m torch.distributed.run --standalone --nproc-per-node 2 train_worker.py RUN_DIR EPOCHS [FAIL_RANK FAIL_STEP]
    ... train_worker.py RUN_DIR EPOCHS interrupt STEP

With FAIL_RANK/FAIL_STEP, that rank raises RuntimeError after optimizer step FAIL_STEP, as a crashing
rank would; the test checks that the whole job ends quickly with a non-zero exit and that the run can be
resumed (`convscope train --resume`, with any process count). With `interrupt STEP`, rank 0 sends SIGINT
to its whole process group after step STEP, as Ctrl-C in a terminal does (torchrun and every rank).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch

from convscope import TrainConfig
from convscope.dist.context import current
from convscope.experiments import run_training
from convscope.train import Callback


class FailAt(Callback):
    order = 95

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def after_step(self) -> None:
        if current().rank == self.rank and self.learn.train_iter == self.step:
            (self.learn.run_saver.path / "failed_at").write_text(repr(time.time()))  # for the test's clock
            raise RuntimeError(f"injected failure on rank {self.rank} after step {self.step}")


class CtrlC(Callback):
    order = 95

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if current().rank == 0 and self.learn.train_iter == self.step:
            os.killpg(os.getpgrp(), signal.SIGINT)


def main() -> None:
    run_dir, epochs = Path(sys.argv[1]), float(sys.argv[2])
    torch.set_num_threads(1)  # two processes on two cores
    if len(sys.argv) > 4:
        cbs = [CtrlC(int(sys.argv[4]))] if sys.argv[3] == "interrupt" else [FailAt(int(sys.argv[3]), int(sys.argv[4]))]
    else:
        cbs = []
    cfg = TrainConfig(out=str(run_dir.parent), name=run_dir.name, epochs=epochs, bs=256, lr=0.06, device="cpu",
                      seed=5)
    result = run_training(cfg, cbs=cbs, checkpoint_every=20)
    if current().is_main and result.metrics:
        print("accuracy", result.metrics[-1]["accuracy"], flush=True)
    if result.interrupted is not None:
        print(f"rank {current().rank} stopped at step {result.learn.train_iter}", flush=True)
        sys.exit(128 + result.interrupted)


if __name__ == "__main__":
    main()
