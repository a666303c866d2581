"""convscope's Learner against a minimal hand-written PyTorch loop: same model, data, seed, steps.

Both train the book's simple_cnn (+BatchNorm) on real MNIST with AdamW and a 1cycle schedule (the bare
loop uses torch's OneCycleLR), batch size 512, data already in memory. Contenders run interleaved, each
repeat in a fresh process. Last line: `train_speed ratio=<convscope samples/s / bare-loop samples/s>`.

    python benchmarks/train_speed.py [--repeats 5] [--steps 117]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _common import bare_epoch, bare_optimizer, describe, run_worker

BS, LR = 512, 0.06


def load():
    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset

    data = load_dataset("mnist")
    x, _, _ = normalize_images(data.train_images)
    return x, data.train_labels


def worker_convscope(steps: int) -> float:
    from convscope.data.batches import DeviceBatches
    from convscope.models.cnn import simple_cnn
    from convscope.train import Callback, CancelFitException, Learner

    x, y = load()
    torch.manual_seed(0)
    dl = DeviceBatches(x, y, BS, shuffle=True, drop_last=True, seed=0)

    class StopAfter(Callback):
        def after_step(self) -> None:
            if self.learn.train_iter == steps:
                raise CancelFitException

    learn = Learner(simple_cnn(), dl, None)
    epochs = -(-steps // len(dl))
    # Build the optimizer outside the timed region, as the bare loop does: torch's first AdamW
    # construction imports its compile machinery (about 1.6 s here), a one-off cost of either contender.
    learn.create_opt()
    start = time.perf_counter()
    learn.fit_one_cycle(epochs, LR, cbs=[StopAfter()])
    return steps * BS / (time.perf_counter() - start)


def worker_bare(steps: int) -> float:
    from convscope.models.cnn import simple_cnn

    x, y = load()
    torch.manual_seed(0)
    model = simple_cnn()
    opt, sched = bare_optimizer(model, LR, steps)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    done = 0
    while done < steps:
        done += bare_epoch(model, opt, sched, x, y, BS, gen, max_steps=steps - done)
    next(model.parameters()).sum().item()  # wait for the last step (matters on a GPU only)
    return steps * BS / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=117, help="optimizer steps per run (117 = one epoch)")
    ap.add_argument("--worker", choices=["convscope", "bare"])
    args = ap.parse_args()
    if args.worker:
        fn = worker_convscope if args.worker == "convscope" else worker_bare
        print(json.dumps({"samples_per_s": fn(args.steps)}))
        return
    results: dict[str, list[float]] = {"convscope": [], "bare": []}
    for r in range(args.repeats):
        order = ["convscope", "bare"] if r % 2 == 0 else ["bare", "convscope"]
        for name in order:
            sps = run_worker(__file__, ["--worker", name, "--steps", str(args.steps)])["samples_per_s"]
            results[name].append(sps)
            print(f"repeat {r + 1} {name:9s} {sps:,.0f} samples/s", flush=True)
    for name, vals in results.items():
        print(f"{name:9s} samples/s: {describe(vals)}")
    ratio = statistics.median(results["convscope"]) / statistics.median(results["bare"])
    print(f"train_speed ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
