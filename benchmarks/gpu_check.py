"""The CUDA path in one short script: training steps with the statistics on, and the host syncs they make.

    python benchmarks/gpu_check.py [--steps 200]

Trains the book's simple_cnn on real MNIST on the GPU through convscope's Learner (data on the device,
ActivationStats at its defaults, NonFiniteGuard, Recorder, 1cycle) with
`torch.cuda.set_sync_debug_mode("warn")` on after a few warm-up steps, and counts the host syncs. By
design the only ones are: the guard's flag read every 16 steps, the statistics block copied to the
host every 64 recorded rows, and the losses read once per epoch; anything per step is a bug.
Then it times seconds to 99.0% for the fast and the book recipe through convscope and the book recipe in
the bare loop on this GPU (one seed each; the fast recipe once untimed first, as a warm-up), counting the
host syncs of 50 mid-epoch steps of each convscope run. Last line:
`gpu_check syncs_per_step=<n> fast_s=<s> book_s=<s> bare_s=<s> fast_ratio=<s> book_ratio=<s>`.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
import warnings

import torch


def count_syncs(steps: int) -> float:
    from convscope.data.batches import DeviceBatches, normalize_images
    from convscope.data.sources import load_dataset
    from convscope.models.cnn import simple_cnn
    from convscope.stats.activations import ActivationStats
    from convscope.train import Callback, CancelFitException, Learner
    from convscope.train.guard import NonFiniteGuard

    dev = torch.device("cuda")
    data = load_dataset("mnist")
    x, _, _ = normalize_images(data.train_images, device=dev)
    dl = DeviceBatches(x, data.train_labels.to(dev), 512, shuffle=True, drop_last=True)
    where: collections.Counter[str] = collections.Counter()

    class Watch(Callback):
        order = -100

        def before_batch(self) -> None:
            if self.learn.train_iter == 5:
                torch.cuda.set_sync_debug_mode("warn")
            if self.learn.train_iter == 5 + steps:
                torch.cuda.set_sync_debug_mode("default")
                raise CancelFitException

    # device=dev: without it the Learner takes the model's device, the CPU, and this part would train there
    learn = Learner(simple_cnn(), dl, None, cbs=[Watch(), ActivationStats(), NonFiniteGuard()], device=dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit_one_cycle(-(-(steps + 6) // len(dl)), 0.06)
    for w in caught:
        if "synchroniz" in str(w.message):
            where[f"{w.filename.split('site-packages/')[-1]}:{w.lineno}"] += 1
    total = sum(where.values())
    print(f"{total} host syncs in {steps} steps; by place: {dict(where)}")
    return total / steps


def seconds_to_99(recipe: str, sync_window: tuple[int, int] = (150, 200)) -> float:
    """Seconds to 99.0% through `convscope.experiments.run_training` (run folder written, statistics on), and the
    host syncs inside steps [a, b) of epoch 2 (no epoch end there; for the fast recipe conv1 is frozen)."""
    from convscope.config import TrainConfig
    from convscope.experiments import run_training
    from convscope.experiments.recipes import recipe_settings
    from convscope.stats.activations import ActivationStats
    from convscope.train import Callback

    a, b = sync_window

    class Syncs(Callback):
        order = -100

        def before_batch(self) -> None:
            if self.learn.training and self.learn.train_iter == a:
                torch.cuda.set_sync_debug_mode("warn")
            if self.learn.training and self.learn.train_iter == b:
                torch.cuda.set_sync_debug_mode("default")

    class Clock(Callback):
        order = 100

        def before_fit(self) -> None:
            self.start, self.hit = time.perf_counter(), float("inf")

        def after_epoch(self) -> None:
            torch.cuda.synchronize()
            if self.learn.valid_results["accuracy"] >= 0.99 and self.hit == float("inf"):
                self.hit = time.perf_counter() - self.start

    settings = recipe_settings("fast") if recipe == "fast" else {"epochs": 5, "lr": 0.1}
    clock = Clock()
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_training(TrainConfig(**settings, device="cuda", out=out, name="r"),
                       cbs=[clock, Syncs(), ActivationStats()], stats=False)
    where = collections.Counter(f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in caught
                                if "synchroniz" in str(w.message))
    print(f"{recipe}: {clock.hit:.2f} s to 99.0%, final {100 * result.metrics[-1]['accuracy']:.2f}%; "
          f"{sum(where.values())} host syncs in steps {a}-{b - 1}: {dict(where)}")
    return clock.hit


def bare_seconds_to_99() -> float:
    """The book recipe in the bare PyTorch loop of benchmarks/_common.py, data on the GPU."""
    from _common import bare_accuracy, bare_epoch, bare_optimizer

    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset
    from convscope.models.cnn import simple_cnn

    dev = torch.device("cuda")
    data = load_dataset("mnist")
    x, mean, std = normalize_images(data.train_images, device=dev)
    xt, _, _ = normalize_images(data.test_images, mean, std, device=dev)
    y, yt = data.train_labels.to(dev), data.test_labels.to(dev)
    torch.manual_seed(0)
    model = simple_cnn().to(dev)
    opt, sched = bare_optimizer(model, 0.1, 5 * (len(x) // 512))
    gen = torch.Generator().manual_seed(0)
    start, hit = time.perf_counter(), float("inf")
    for _ in range(5):
        bare_epoch(model, opt, sched, x, y, 512, gen)
        acc = bare_accuracy(model, xt, yt, 1024)  # reads the result: the GPU has finished the epoch
        if acc >= 0.99 and hit == float("inf"):
            hit = time.perf_counter() - start
    print(f"bare: {hit:.2f} s to 99.0%, final {100 * acc:.2f}%")
    return hit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this check needs one")
    print(torch.cuda.get_device_name(0), torch.__version__)
    per_step = count_syncs(args.steps)
    seconds_to_99("fast")  # warm-up: cuDNN autotuning and CUDA context costs land here, not in the timings
    fast, book, bare = seconds_to_99("fast"), seconds_to_99("book"), bare_seconds_to_99()
    print(f"gpu_check syncs_per_step={per_step:.3f} fast_s={fast:.2f} book_s={book:.2f} bare_s={bare:.2f} "
          f"fast_ratio={fast / bare:.3f} book_ratio={book / bare:.3f}")


if __name__ == "__main__":
    main()
