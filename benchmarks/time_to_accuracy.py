"""Seconds to 99.0% MNIST test accuracy: the fast recipe and the book recipe through convscope, and the
book recipe through a bare PyTorch loop.

    python benchmarks/time_to_accuracy.py [--repeats 3]

(a) fast: `TrainConfig(**recipe_settings("fast"))` through `convscope.experiments.run_training`, ActivationStats
    at its defaults on, the run folder written as `convscope train` writes it;
(b) book: the fastai book's recipe (simple_cnn + BatchNorm, bs 512, AdamW, fit_one_cycle(5, 0.1)) through
    the same path;
(c) bare: the book recipe in a hand-written loop (torch's AdamW + OneCycleLR, same model and data).
All three keep the whole dataset in memory, validate on the 10k test set at every epoch end (or the end
of a fractional epoch), and count the seconds from the start of training to the end of the first
validation at >= 99.0%: training, statistics, validation and checkpoints included; process start, data
loading and (for convscope) the report written after training left out. Repeat r uses seed r for all
three; contenders run interleaved, each repeat in a fresh process, glibc malloc thresholds pinned.
Last line: `time_to_accuracy fast_s=<a> book_s=<b> bare_s=<c> fast_ratio=<a/c> book_ratio=<b/c>` (medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch
from _common import bare_accuracy, bare_epoch, bare_optimizer, run_worker

TARGET = 0.99
BOOK = {"epochs": 5, "lr": 0.1, "bs": 512}


def worker_convscope(recipe: str, seed: int) -> dict:
    from convscope.config import TrainConfig
    from convscope.experiments import run_training
    from convscope.experiments.recipes import recipe_settings
    from convscope.stats.activations import ActivationStats
    from convscope.train import Callback

    class Clock(Callback):
        order = 100  # after RunSaver (90): its epoch-end checkpoint counts

        def before_fit(self) -> None:
            self.start, self.marks = time.perf_counter(), []

        def after_epoch(self) -> None:
            self.marks.append((time.perf_counter() - self.start, self.learn.valid_results["accuracy"]))

    settings = recipe_settings("fast") if recipe == "fast" else dict(BOOK)
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(**settings, seed=seed, device="cpu", out=out, name="run")
        # stats=False + our own ActivationStats(): the same statistics as `convscope train`, without the
        # diagnosis and report written after training (not part of time to accuracy).
        result = run_training(cfg, cbs=[clock, ActivationStats()], stats=False)
    steps, bs = result.learn.train_iter, cfg.bs
    return {"marks": clock.marks, "samples_per_s": steps * bs / clock.marks[-1][0]}


def worker_bare(seed: int) -> dict:
    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset
    from convscope.models.cnn import simple_cnn

    data = load_dataset("mnist")
    x, mean, std = normalize_images(data.train_images)
    xt, _, _ = normalize_images(data.test_images, mean, std)
    y, yt = data.train_labels, data.test_labels
    bs, epochs, lr = BOOK["bs"], BOOK["epochs"], BOOK["lr"]
    steps_per_epoch = len(x) // bs
    torch.manual_seed(seed)
    model = simple_cnn()
    opt, sched = bare_optimizer(model, lr, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    marks = []
    start = time.perf_counter()
    for _ in range(epochs):
        bare_epoch(model, opt, sched, x, y, bs, gen)
        marks.append((time.perf_counter() - start, bare_accuracy(model, xt, yt, 1024)))
    return {"marks": marks, "samples_per_s": epochs * steps_per_epoch * bs / marks[-1][0]}


def seconds_to_target(marks: list[tuple[float, float]]) -> float:
    return next((t for t, acc in marks if acc >= TARGET), float("inf"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=["fast", "book", "bare"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.worker:
        out = worker_bare(args.seed) if args.worker == "bare" else worker_convscope(args.worker, args.seed)
        print(json.dumps(out))
        return
    names = ["fast", "book", "bare"]
    secs: dict[str, list[float]] = {n: [] for n in names}
    accs: dict[str, list[float]] = {n: [] for n in names}
    speed: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % 3:] + names[: r % 3]
        for name in order:
            res = run_worker(__file__, ["--worker", name, "--seed", str(r)])
            s = seconds_to_target(res["marks"])
            secs[name].append(s)
            accs[name].append(res["marks"][-1][1])
            speed[name].append(res["samples_per_s"])
            trail = " ".join(f"{t:.1f}s:{100 * a:.2f}%" for t, a in res["marks"])
            print(f"repeat {r + 1} seed {r} {name:4s} to {100 * TARGET:.1f}%: {s:6.2f} s   "
                  f"({res['samples_per_s']:,.0f} samples/s; at each validation {trail})", flush=True)
    for name in names:
        reached = sum(s < float("inf") for s in secs[name])
        print(f"{name:4s} seconds to {100 * TARGET:.1f}%: median {statistics.median(secs[name]):.2f}  "
              f"min {min(secs[name]):.2f}  max {max(secs[name]):.2f}; reached in {reached}/{len(secs[name])} seeds; "
              f"final accuracy {', '.join(f'{100 * a:.2f}%' for a in accs[name])}; "
              f"samples/s median {statistics.median(speed[name]):,.0f}")
    book_speed = statistics.median(speed["book"]) / statistics.median(speed["bare"])
    print(f"book recipe samples/s, convscope / bare loop: {book_speed:.3f}")
    med = {n: statistics.median(secs[n]) for n in names}
    print(f"time_to_accuracy fast_s={med['fast']:.2f} book_s={med['book']:.2f} bare_s={med['bare']:.2f} "
          f"fast_ratio={med['fast'] / med['bare']:.3f} book_ratio={med['book'] / med['bare']:.3f}")
    if any(s == float("inf") for s in secs["fast"]):
        sys.exit("the fast recipe missed 99.0% in at least one seed")


if __name__ == "__main__":
    main()
