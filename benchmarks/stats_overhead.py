"""What recording activation statistics costs: training time and memory, side by side in one run.

Contenders, real MNIST, simple_cnn + BN, bs 512, one epoch of AdamW + one-cycle (torch's, as the bare
loop of the other benchmarks) in a plain loop on the CPU (no validation):
    none     no statistics
    exact    convscope.watch(model, every=1, sample=None) on every layer with parameters: the collector
             ActivationStats(with_hist=True, every=1, sample=None) drives in a Learner
    default  convscope.watch(model) with its default settings (every layer with parameters + activations)
    naive    the straightforward way: forward hooks reading each statistic with .item() and the histogram
             with .cpu(), every step (how fastai's callback works)
Time: all four contenders train in one process from the same weights and batches, taking turns of `chunk`
steps. Fresh processes per contender differ in speed by up to ~40% from one start to the next on a shared
machine (2.5-3.6 s for the same `none` epoch, measured here), which no number of repeats makes small; and
whole epochs one after the other in one process still drift by +-15%; turns of a few steps see the same
machine state. (Each contender's Learner in a thread of its own, stopping at its turn's end, was tried:
OpenMP gives each calling thread its own team of workers, and the waiting teams' spinning slowed every
contender by ~40%; so the loops are plain, and watch() drives the statistics.) Python's cyclic garbage
collector is off during the turns and collects between rounds (untimed), as in timeit and
model_overhead.py: a full collection of the process's ~340k objects takes ~0.1 s (4 steps) and falls on
whichever contender happens to trip it. Each repeat is a fresh process; the turn order rotates between
repeats.
Memory: each contender's epoch once more in a fresh process of its own, for its peak RSS; the median of
`--memory-repeats` such processes per contender.
Last line: `stats_overhead exact=<ratio> default=<ratio> naive=<ratio> extra_mb=<MB>`; ratios are
the medians over repeats of a contender's seconds over `none`'s seconds in the same repeat; extra_mb is the
peak-RSS increase of `exact` over `none`.

    python benchmarks/stats_overhead.py [--repeats 3] [--chunk 4] [--memory-repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from _common import bare_optimizer, run_worker

BS, LR = 512, 0.06
CONTENDERS = ("none", "exact", "default", "naive")


class NaiveStats:
    """Per-step host reads, as in a straightforward implementation (and fastai's ActivationStats)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.rows: list[list[float]] = []
        self.hists: list[torch.Tensor] = []
        self.modules = param_layers(model)
        self.handles: list = []

    def __enter__(self) -> NaiveStats:
        self.handles = [m.register_forward_hook(self.hook) for m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def step(self, loss: torch.Tensor) -> None:
        pass

    def hook(self, module, inputs, output) -> None:
        if not module.training:
            return
        o = output.detach().float()
        self.rows.append([o.mean().item(), o.std().item(), (o <= 0.05).float().mean().item()])
        self.hists.append(torch.histc(o, 40, 0, 10).cpu())


def param_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if not list(m.children()) and list(m.parameters(recurse=False))]


def statistics_for(kind: str, model: torch.nn.Module):
    """The context a contender's loop runs in: watch() (the collector ActivationStats drives) or naive hooks."""
    import contextlib

    import convscope

    if kind == "exact":
        return convscope.watch(model, every=1, sample=None, modules=param_layers(model))
    if kind == "default":
        return convscope.watch(model)
    if kind == "naive":
        return NaiveStats(model)
    return contextlib.nullcontext()


class Contender:
    """One contender's epoch as a plain loop, `chunk` steps per turn (see the module docstring)."""

    def __init__(self, kind: str, x: torch.Tensor, y: torch.Tensor) -> None:
        from convscope.models.cnn import simple_cnn

        torch.manual_seed(0)
        self.kind, self.model = kind, simple_cnn()
        self.x, self.y = x, y
        self.order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        self.steps = len(x) // BS
        self.opt, self.sched = bare_optimizer(self.model, LR, self.steps)  # built before any clock starts
        self.at, self.seconds = 0, 0.0
        self.context = statistics_for(kind, self.model)
        self.w = self.context.__enter__()

    @property
    def done(self) -> bool:
        return self.at >= self.steps

    def turn(self, chunk: int) -> None:
        start = time.perf_counter()
        self.model.train()
        for _ in range(min(chunk, self.steps - self.at)):
            idx = self.order[self.at * BS:(self.at + 1) * BS]
            loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
            loss.backward()
            self.opt.step()
            self.sched.step()
            if self.w is not None:
                self.w.step(loss)
            self.opt.zero_grad(set_to_none=True)
            self.at += 1
        if self.done:
            self.context.__exit__(None, None, None)
            if self.kind in ("exact", "default"):
                _ = self.w.data.mean  # include turning the buffers into arrays
        self.seconds += time.perf_counter() - start


def load_x_y() -> tuple[torch.Tensor, torch.Tensor]:
    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset

    data = load_dataset("mnist")
    x, _, _ = normalize_images(data.train_images)
    return x, data.train_labels


def timing_worker(rotate: int, chunk: int) -> dict[str, float]:
    kinds = CONTENDERS[rotate % len(CONTENDERS):] + CONTENDERS[:rotate % len(CONTENDERS)]
    x, y = load_x_y()
    contenders = [Contender(kind, x, y) for kind in kinds]
    while not all(c.done for c in contenders):
        gc.collect()
        gc.disable()
        try:
            for c in contenders:
                c.turn(chunk)
        finally:
            gc.enable()
    return {c.kind: c.seconds for c in contenders}


def memory_worker(kind: str) -> dict[str, float]:
    x, y = load_x_y()
    c = Contender(kind, x, y)
    while not c.done:
        c.turn(c.steps)
    return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=4, help="steps per turn")
    ap.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per contender for peak RSS")
    ap.add_argument("--timing-worker", type=int, metavar="ROTATE")
    ap.add_argument("--memory-worker", choices=CONTENDERS)
    args = ap.parse_args()
    if args.timing_worker is not None:
        print(json.dumps(timing_worker(args.timing_worker, args.chunk)))
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker)))
        return
    ratios: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    for r in range(args.repeats):
        res = run_worker(__file__, ["--timing-worker", str(r), "--chunk", str(args.chunk)])
        for kind in CONTENDERS:
            ratios[kind].append(res[kind] / res["none"])
        print(f"repeat {r + 1}: " + "  ".join(f"{k} {res[k]:.2f} s" for k in CONTENDERS)
              + "  ratios " + " ".join(f"{k} {ratios[k][-1]:.3f}" for k in CONTENDERS[1:]), flush=True)
    # Peak RSS of one fresh process moves by ~10 MB from one start to the next (exact - none gave 8.4 and
    # 20.8 MB in two runs here): the median of --memory-repeats processes per contender, taken in turns.
    peaks: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    for _ in range(args.memory_repeats):
        for k in CONTENDERS:
            peaks[k].append(run_worker(__file__, ["--memory-worker", k])["peak_mb"])
    peak = {k: statistics.median(v) for k, v in peaks.items()}
    print("peak RSS MB (median; all): " + ", ".join(
        f"{k} {peak[k]:.1f} ({' '.join(f'{v:.1f}' for v in peaks[k])})" for k in CONTENDERS))
    med = {k: statistics.median(v) for k, v in ratios.items()}
    for kind in CONTENDERS[1:]:
        print(f"{kind:8s} ratio: min {min(ratios[kind]):.3f}  max {max(ratios[kind]):.3f}")
    print(f"stats_overhead exact={med['exact']:.3f} default={med['default']:.3f} "
          f"naive={med['naive']:.3f} extra_mb={peak['exact'] - peak['none']:.1f}")


if __name__ == "__main__":
    main()
