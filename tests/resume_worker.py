"""Run by test_resume.py in a real subprocess: train a short MNIST run, optionally signalling itself.

    python resume_worker.py RUN_DIR straight|kill|int|term|resume AT_STEP [book|fast]

`kill`/`int`/`term` send SIGKILL/SIGINT/SIGTERM to this process when the optimizer step AT_STEP has
finished, from inside training, so the interruption lands at the same point every time. Exit codes
mirror `convscope train`: 128 + signal for a graceful stop.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from convscope import TrainConfig
from convscope.experiments import run_training
from convscope.experiments.recipes import recipe_settings
from convscope.train import Callback

SIGNALS = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}


class SignalSelf(Callback):
    order = 95

    def __init__(self, at_step: int, signum: int) -> None:
        self.at_step, self.signum = at_step, signum

    def after_step(self) -> None:
        if self.learn.train_iter == self.at_step:
            os.kill(os.getpid(), self.signum)


def config(run_dir: Path, recipe: str = "book") -> TrainConfig:
    """`fast` adds the fast recipe's crop, Linear head, channels_last and the freeze of conv1 half-way."""
    # A fixed statistics interval: every="auto" chooses from measured time once 24 steps have run (these runs
    # have 32), so a straight run and a resumed one may keep different rows (stats/interval.py), and these
    # runs must match bitwise.
    settings = recipe_settings(recipe, epochs=2, bs=256, lr=0.03, limit_train=4096, device="cpu", seed=7,
                               stats_every=4)
    return TrainConfig(**settings, out=str(run_dir.parent), name=run_dir.name, recipe=recipe)


def main() -> None:
    run_dir, mode, at_step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    recipe = sys.argv[4] if len(sys.argv) > 4 else "book"
    if mode == "resume":
        result = run_training(config(run_dir, recipe), resume=run_dir)
    else:
        cbs = [SignalSelf(at_step, SIGNALS[mode])] if mode in SIGNALS else []
        result = run_training(config(run_dir, recipe), cbs=cbs)
    if result.interrupted is not None:
        sys.exit(128 + result.interrupted)


if __name__ == "__main__":
    main()
