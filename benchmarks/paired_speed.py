"""The book recipe through `convscope train`'s path against a bare PyTorch loop, interleaved step by step.

    python benchmarks/paired_speed.py [--repeats 3] [--chunk 4] [--epochs 1] [--no-stats | --stats-every N]

Why another speed benchmark: on a shared machine the throughput drifts by +-20% within minutes, so two
runs made one after the other (time_to_accuracy.py, train_speed.py) compare different machine states
as much as they compare code. Here both contenders live in one process and take turns every `chunk`
steps, so they see the same machine state, and their ratio resolves a few percent.

Contenders, both the book recipe (simple_cnn + BN, bs 512, AdamW, one-cycle lr 0.1, real MNIST in memory):
    convscope  `convscope.experiments.run_training`, as `convscope train` runs it: ActivationStats at its defaults,
               the NaN guard, the recorder, the run folder with its epoch-end checkpoints; validation on
               the 10k test set at every epoch end (the report written after training is left out).
               `--no-stats` leaves ActivationStats out, to see what the statistics cost on their own;
               `--stats-every N` records every N-th step instead of `every="auto"` (N larger than the run:
               one row, at step 0, so what the callback costs apart from its rows).
    bare       torch's AdamW + OneCycleLR in a plain loop, validating at the same epoch ends.
A callback runs the bare loop's next `chunk` steps after every `chunk` convscope steps (and its
validation after convscope's); the bare loop's seconds are timed on their own and taken out of the
convscope fit's seconds. Each repeat is a fresh process with seed r.
Last line: `paired_speed ratio=<median over repeats of convscope samples/s / bare samples/s>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from _common import bare_accuracy, bare_optimizer, run_worker

BOOK = {"lr": 0.1, "bs": 512}


def worker(seed: int, chunk: int, epochs: int, stats: bool = True, every: int | None = None) -> dict:
    import torch.nn.functional as F

    from convscope.config import TrainConfig
    from convscope.data.batches import DeviceBatches, normalize_images
    from convscope.data.sources import load_dataset
    from convscope.experiments import run_training
    from convscope.models.cnn import simple_cnn
    from convscope.stats.activations import ActivationStats
    from convscope.train import Callback

    data = load_dataset("mnist")
    x, mean, std = normalize_images(data.train_images)
    xt, _, _ = normalize_images(data.test_images, mean, std)
    torch.manual_seed(seed)
    model = simple_cnn()
    batches = DeviceBatches(x, data.train_labels, BOOK["bs"], shuffle=True, drop_last=True, seed=seed)
    opt, sched = bare_optimizer(model, BOOK["lr"], epochs * len(batches))

    class BareTurns(Callback):
        """Runs the bare loop's turns inside convscope's fit and keeps their seconds apart."""

        order = 1000  # after every other callback of the step

        def before_fit(self) -> None:
            self.start, self.bare_s, self.bare_steps = time.perf_counter(), 0.0, 0
            self.batches, self.epoch_done = iter(batches), False
            self.bare_acc: list[float] = []

        def after_batch(self) -> None:
            if self.learn.training and self.learn.train_iter % chunk == 0:
                self._bare_steps(chunk)

        def after_epoch(self) -> None:
            self._bare_steps(len(batches))  # the rest of the bare epoch, if any
            t = time.perf_counter()
            self.bare_acc.append(bare_accuracy(model, xt, data.test_labels, 1024))
            self.bare_s += time.perf_counter() - t
            self.batches, self.epoch_done = iter(batches), False  # the next epoch's order (after the last's)

        def after_fit(self) -> None:
            self.total_s = time.perf_counter() - self.start

        def _bare_steps(self, n: int) -> None:
            t = time.perf_counter()
            model.train()
            for _ in range(n):
                if self.epoch_done:  # wait for convscope's epoch to end too
                    break
                try:
                    xb, yb = next(self.batches)
                except StopIteration:
                    self.epoch_done = True
                    break
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                self.bare_steps += 1
            self.bare_s += time.perf_counter() - t

    turns = BareTurns()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(**BOOK, epochs=epochs, seed=seed, device="cpu", out=out, name="run")
        # stats=False + ActivationStats(): the statistics of `convscope train`, without the report after fit.
        collect = ActivationStats() if every is None else ActivationStats(every=every)
        result = run_training(cfg, cbs=[turns, collect] if stats else [turns], stats=False)
    steps = result.learn.train_iter
    # the interval every="auto" chose from its calibration window (the rows' share of the cost depends on it)
    chosen = collect.collector.chooser.measured if stats and collect.collector.chooser is not None else {}
    convscope_s = turns.total_s - turns.bare_s
    return {"convscope_sps": steps * cfg.bs / convscope_s, "bare_sps": turns.bare_steps * cfg.bs / turns.bare_s,
            "steps": steps, "bare_steps": turns.bare_steps,
            "convscope_acc": result.learn.valid_results["accuracy"], "bare_acc": turns.bare_acc[-1],
            "rows": chosen}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=4, help="steps per turn")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--no-stats", action="store_true", help="convscope without ActivationStats")
    ap.add_argument("--stats-every", type=int, default=None,
                    help="ActivationStats(every=N) instead of the default; a huge N: the callback without rows")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.seed, args.chunk, args.epochs, not args.no_stats, args.stats_every)))
        return
    ratios = []
    stats_args = ["--no-stats"] if args.no_stats else []
    if args.stats_every is not None:
        stats_args += ["--stats-every", str(args.stats_every)]
    for r in range(args.repeats):
        res = run_worker(__file__, ["--worker", "--seed", str(r), "--chunk", str(args.chunk),
                                    "--epochs", str(args.epochs), *stats_args])
        ratios.append(res["convscope_sps"] / res["bare_sps"])
        print(f"repeat {r + 1} seed {r}: convscope {res['convscope_sps']:,.0f} samples/s ({res['steps']} steps), "
              f"bare {res['bare_sps']:,.0f} samples/s ({res['bare_steps']} steps), ratio {ratios[-1]:.3f}; "
              f"test accuracy {100 * res['convscope_acc']:.2f}% / {100 * res['bare_acc']:.2f}%"
              + (f"; rows every {rows['every']} (row {rows['row_ms']:.1f} ms, step {rows['step_ms']:.1f} ms)"
                 if (rows := res["rows"]) else ""), flush=True)
    print(f"ratio min {min(ratios):.3f}  max {max(ratios):.3f}")
    print(f"paired_speed ratio={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
