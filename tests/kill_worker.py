"""Run by test_killed_anywhere.py in a real subprocess: a short real run SIGKILLed at random moments.

    python kill_worker.py DATA_ROOT OUT_DIR SEED N_MOMENTS

A "moment" is one of the points a run passes through, counted in order: each training batch, and the
steps of every file write (before and after safetensors' save_file, before each fsync and before and after
each rename, in checkpoints, steps, metrics, stats, findings and the report; before each figure of the
report). The straight run counts them; then for each moment, drawn from SEED, a fresh run is SIGKILLed
there and resumed as `convscope train --resume` resumes it (its own config.json, no other setting), and
its files are left in OUT_DIR/kill-NNN for the test to compare with OUT_DIR/straight.

The straight run is made by this process, which then forks a child for each killed run and each resume:
they start with everything imported and warmed up (a fresh process spends seconds on that, the run itself
about one). Every run uses one CPU thread (no thread pool to fork), so all compute the same floats in the
same order.
The report's figures are replaced by one-line notes (drawing them is most of a run's time and none of its
state); the page is still rendered and written the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


class Moments:
    """Counts the points a run passes; SIGKILLs this process at point `kill_at` (1-based; 0: never)."""

    def __init__(self) -> None:
        self.kill_at, self.count = 0, 0

    def reset(self, kill_at: int) -> None:
        self.kill_at, self.count = kill_at, 0

    def tick(self) -> None:
        self.count += 1
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def around(self, fn: Any, before: bool = True, after: bool = True) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                self.tick()
            result = fn(*args, **kwargs)
            if after:
                self.tick()
            return result

        return wrapped


def instrument(moments: Moments) -> None:
    """Put a tick at every point of interest of this (child) process."""
    import convscope.report.html as html
    import convscope.runs.checkpoint as checkpoint
    from convscope.train.recorder import Recorder

    os.replace = moments.around(os.replace)
    os.fsync = moments.around(os.fsync, after=False)
    checkpoint.save_file = moments.around(checkpoint.save_file)
    Path.rename = moments.around(Path.rename)  # the rotation of checkpoint folders
    html._figure = lambda make, alt: (moments.tick(), html._note(f"{alt}: not drawn in this test"))[1]
    Recorder.after_batch = moments.around(Recorder.after_batch, after=False)  # each batch, training or not


def config(data_root: str, run_dir: Path) -> Any:
    from convscope import TrainConfig

    return TrainConfig(data_root=data_root, limit_train=512, bs=128, epochs=2, channels=(4, 8, 16, 16),
                       lr=0.03, device="cpu", seed=3, out=str(run_dir.parent), name=run_dir.name)


MOMENTS = Moments()


def fresh(data_root: str, run_dir: Path, kill_at: int) -> None:
    """A new run (checkpointing every step), SIGKILLed at moment `kill_at` (0: never)."""
    from convscope.experiments import run_training

    MOMENTS.reset(kill_at)
    run_training(config(data_root, run_dir), checkpoint_every=1)


def resume(data_root: str, run_dir: Path) -> None:
    """Child: what `convscope train --resume RUN` does; a run killed before its first checkpoint cannot be
    resumed, and is started again, as its user would."""
    from convscope.errors import RunError
    from convscope.experiments import run_training
    from convscope.experiments.run import resume_config
    from convscope.runs.checkpoint import load_checkpoint

    MOMENTS.reset(0)
    try:
        load_checkpoint(run_dir)
    except RunError:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_training(config(data_root, run_dir), checkpoint_every=1)
        return
    run_training(resume_config(run_dir), resume=run_dir)


def in_child(fn: Any, *args: Any) -> int:
    """Run fn(*args) in a forked child; its wait status as a shell would say it (128 + signal if killed)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 -- report any failure to the parent, never return to it
            print(f"{fn.__name__}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main() -> None:
    data_root, out, seed, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)  # before any torch work: no thread pool exists when the children are forked
    instrument(MOMENTS)
    fresh(data_root, out / "straight" / "run", 0)
    total = MOMENTS.count
    moments = sorted(int(k) for k in np.random.default_rng(seed).integers(1, total + 1, size=n))
    trials = []
    for i, kill_at in enumerate(moments):
        run_dir = out / f"kill-{i:03d}" / "run"
        run_dir.parent.mkdir()
        killed = in_child(fresh, data_root, run_dir, kill_at)
        resumed = in_child(resume, data_root, run_dir)
        trials.append({"moment": kill_at, "killed": killed, "resumed": resumed, "run": str(run_dir)})
    json.dump({"seed": seed, "moments": total, "trials": trials}, sys.stdout)


if __name__ == "__main__":
    main()
