"""What the default statistics cost on a user's model, eager and compiled, in the Learner and in watch().

    python benchmarks/model_overhead.py [--repeats 5] [--seconds 3] [--chunk 0] [--bs 128] [--models ...]
                                        [--compiled 0 1] [--quick]

Cells: two models x eager/compiled x two drivers, each the default statistics (rows from the first 64 items
of a batch, at the interval `every="auto"` chooses for this machine: stats/interval.py) against the same
training without them:
    simple      convscope's simple_cnn (with BatchNorm) on real MNIST, 1x28x28
    resnet      the torchvision-style ResNet of tests/stats/_user_models.py on real Fashion-MNIST, zero-padded
                to 32x32 and repeated to 3 channels
    compiled    torch.compile(model) (inductor)
    learner     convscope's Learner with ActivationStats() against the same Learner without it
    watch       a hand-written loop inside convscope.watch(model) against the same loop without it
Method: the two contenders of a cell live in one process (separate processes differ in speed by up to
~10% from one start to the next, measured here, which no interleaving removes), start from the same weights
and take the same batches. They take turns of `chunk` steps (by default the most, up to 16, that take at
most 0.1 s: 16 for simple_cnn, 1 for the ResNet), so both see the same machine state; each repeat
alternates which goes first. Compiled, each contender is its model inside a wrapper class of its own
(`WithStats`, `WithoutStats`), so that each has a forward code object, and so a dynamo cache, of its own, under
dynamo's default guards (what a user's run gets). Two compiled models of one class would share one cache, and
since the default guards do not look at hooks, the model without statistics could run the code traced with
them. Guarding on hooks instead (`skip_nnmodule_hook_guards = False`, this script's method before) puts both
contenders' graphs in one cache, so each lookup may test the other contender's guards first, a cost no user's
run has. The wrappers are for that correctness; they did not move the figures beyond the noise (the compiled
cells moved by 3-5% from one run to the next with either method, measured on a 2-core Zen 4).
Untimed first: the warm-up (compilation, both graph variants), the interval's calibration window (its first
DECIDE_AT = 24 steps at every 4th step, a one-off cost: ~0.3% of a 938-step epoch at the simple model's
measured row cost) and one more turn of each, the one without statistics timed to set the turns' length
and number: a repeat lasts about `--seconds` per contender (shorter repeats could not resolve 2%: with 4 turns of
16 steps, ~0.3 s, single repeats spread over 0.89-1.13; docs/measurements.md#model-overhead), rounded up to
a multiple of the widest interval (64) in steps, so each contender's timed steps hold the same rows. A cell's
ratio is the median over repeats of its summed seconds with statistics over its summed seconds without;
the table shows the min-max over repeats beside it.
The Learner's turns are fits of `chunk` steps each, so both contenders pay a fit's start and end once per
turn (and the statistics their attach and flush there, which a real run pays once per epoch).
Last line: `model_overhead simple=<r> resnet=<r> simple_compiled=<r> resnet_compiled=<r>`, each the worse of
the Learner's and watch()'s ratio for that cell.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import statistics
import sys
import time

import torch
import torch._dynamo
import torch.nn.functional as F
from _common import DEFAULT_DATA, REPO

from convscope.stats.interval import AUTO_MAX, DECIDE_AT

sys.path.insert(0, str(REPO / "tests" / "stats"))  # the user-style models live beside the tests that use them
from _user_models import TorchvisionResNet, fashion_rgb32  # noqa: E402

MODELS = ("simple", "resnet")
WIDEST = AUTO_MAX  # a repeat's steps are a multiple of it
CALIBRATION = DECIDE_AT  # steps before the interval is chosen
WARM_CHUNK = 16  # steps per turn in the warm-up, and the most in a timed turn
TURN_S = 0.1  # a timed turn's longest: slower steps get fewer of them a turn (a ResNet step takes ~0.1 s)


def load(model: str) -> tuple[torch.Tensor, torch.Tensor]:
    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset

    data = load_dataset("mnist" if model == "simple" else "fashion-mnist")
    x, _, _ = normalize_images(data.train_images)
    return (x if model == "simple" else fashion_rgb32(x)), data.train_labels


def build(model: str) -> torch.nn.Module:
    from convscope.models.cnn import simple_cnn

    torch.manual_seed(0)
    return simple_cnn() if model == "simple" else TorchvisionResNet()


class Chunks:
    """The next `chunk` batches of a fixed shuffled order, one turn at a time (a Learner's train data)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int, chunk: int) -> None:
        self.x, self.y, self.bs, self.chunk, self.at = x, y, bs, chunk, 0
        self.order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.chunk

    def __iter__(self):
        for _ in range(self.chunk):
            if (self.at + 1) * self.bs > len(self.x):
                self.at = 0
            idx = self.order[self.at * self.bs:(self.at + 1) * self.bs]
            self.at += 1
            yield self.x[idx], self.y[idx]


class _Wrapper(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model


class WithStats(_Wrapper):
    """The model of the contender with statistics, for torch.compile: a forward code object of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class WithoutStats(_Wrapper):
    """The same for the contender without statistics (its own forward: a second code object, a second cache)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def compiled_forward(model: torch.nn.Module, stats: bool) -> torch.nn.Module:
    return torch.compile((WithStats if stats else WithoutStats)(model))


class LearnerContender:
    def __init__(self, model: torch.nn.Module, data: Chunks, stats: bool, compiled: bool) -> None:
        from convscope.stats.activations import ActivationStats
        from convscope.train import Learner

        self.data = data
        self.stats = ActivationStats() if stats else None
        self.learn = Learner(model, data, cbs=[self.stats] if stats else [], opt_func="sgd", lr=0.01)
        if compiled:
            self.learn.train_model = compiled_forward(model, stats)

    def turn(self) -> None:
        self.learn.fit(1)

    def every(self) -> dict:
        return self.stats.collector.chooser.measured

    def rows(self) -> int:
        return self.stats.data.n_steps


class WatchContender:
    def __init__(self, model: torch.nn.Module, data: Chunks, stats: bool, compiled: bool) -> None:
        import convscope

        self.model, self.data = model, data
        self.forward = compiled_forward(model, stats) if compiled else model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01)
        self.w = convscope.watch(model).__enter__() if stats else None

    def turn(self) -> None:
        for xb, yb in self.data:
            loss = F.cross_entropy(self.forward(xb), yb)
            loss.backward()
            self.opt.step()
            if self.w is not None:
                self.w.step(loss)
            self.opt.zero_grad()

    def every(self) -> dict:
        return self.w.collector.chooser.measured

    def rows(self) -> int:
        return self.w.data.n_steps


def cell(model: str, compiled: bool, driver: str, data, args) -> tuple[float, dict]:
    """Median over repeats of (seconds with statistics) / (seconds without); and how the interval was chosen."""
    import torch._dynamo

    torch._dynamo.reset()  # each cell's models compile afresh (and within dynamo's per-code cache limit)
    make = LearnerContender if driver == "learner" else WatchContender
    base = build(model)
    with_stats = make(copy.deepcopy(base), Chunks(*data, args.bs, WARM_CHUNK), True, compiled)
    without = make(copy.deepcopy(base), Chunks(*data, args.bs, WARM_CHUNK), False, compiled)
    for _ in range(args.warmup):
        with_stats.turn()
        without.turn()
    start = time.perf_counter()
    without.turn()  # untimed too: how long a step takes, for the turns' length and number
    step_s = (time.perf_counter() - start) / WARM_CHUNK
    with_stats.turn()  # so that both take the same batches again
    chunk = args.chunk or chunk_for(step_s)
    with_stats.data.chunk = without.data.chunk = chunk
    turns = args.turns or turns_for(args.seconds, step_s * chunk, chunk)
    ratios = []
    for repeat in range(args.repeats):
        pair = (with_stats, without) if repeat % 2 == 0 else (without, with_stats)
        seconds = {id(with_stats): 0.0, id(without): 0.0}
        # Python's cyclic garbage collector off while timing, as timeit does: a full collection of this
        # process's ~335k objects takes ~200 ms (20 steps of the simple model), and its cost falls on whichever
        # contender happens to trip it, not on the one whose objects it collects.
        gc.collect()
        gc.disable()
        try:
            for _ in range(turns):
                for contender in pair:
                    start = time.perf_counter()
                    contender.turn()
                    seconds[id(contender)] += time.perf_counter() - start
        finally:
            gc.enable()
        ratios.append(seconds[id(with_stats)] / seconds[id(without)])
    if not with_stats.rows():
        sys.exit(f"{model} {driver}: the statistics recorded no row; the measurement is void")
    return statistics.median(ratios), min(ratios), max(ratios), turns * chunk, with_stats.every()


def chunk_for(step_s: float) -> int:
    """Steps per turn: the most (at most WARM_CHUNK, a power of two, so a divisor of WIDEST) whose turn takes
    at most TURN_S, so that a slow model's turns stay short enough to see the same machine state."""
    chunk = WARM_CHUNK
    while chunk > 1 and chunk * step_s > TURN_S:
        chunk //= 2
    return chunk


def turns_for(seconds: float, turn_s: float, chunk: int) -> int:
    """Turns of `chunk` steps that take about `seconds`, rounded up so that a repeat holds a multiple of
    WIDEST steps (the same rows for both contenders whatever interval `auto` chose)."""
    step = WIDEST // math.gcd(chunk, WIDEST)
    return max(step, step * math.ceil(seconds / turn_s / step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="timed seconds per contender and repeat (the number of turns is chosen from it)")
    parser.add_argument("--turns", type=int, default=0, help="timed turns per contender and repeat (0: from --seconds)")
    parser.add_argument("--chunk", type=int, default=0,
                        help=f"steps per turn (0: the most, up to {WARM_CHUNK}, whose turn takes <= {TURN_S} s)")
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--compiled", nargs="+", type=int, default=[0, 1], choices=(0, 1),
                        help="0 eager, 1 torch.compile")
    parser.add_argument("--quick", action="store_true", help="one repeat of two short turns: checks it runs")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.turns, args.chunk = 1, 2, 4
    elif args.turns and not args.chunk:
        parser.error("--turns needs --chunk (the steps per turn are otherwise chosen from the measured step)")
    elif args.turns and (args.turns * args.chunk) % WIDEST:
        parser.error(f"--turns x --chunk must be a multiple of {WIDEST}, so every repeat holds the same rows")
    # untimed: two turns at least (compiled models compile both graph variants) and the calibration window
    args.warmup = max(2, -(-(CALIBRATION + 1) // WARM_CHUNK))
    os.environ.setdefault("CONVSCOPE_DATA", str(DEFAULT_DATA))
    results: dict[str, float] = {}
    print(f"{'cell':<18} {'learner':>20} {'watch':>20}   (seconds with statistics / without: median (min-max) "
          "over repeats; timed steps per contender and repeat; every chosen)")
    for model in args.models:
        data = load(model)
        for compiled in args.compiled:
            compiled = bool(compiled)
            name = model + ("_compiled" if compiled else "")
            ratios = {driver: cell(model, compiled, driver, data, args) for driver in ("learner", "watch")}
            results[name] = max(r[0] for r in ratios.values())
            shown = {d: f"{r[0]:.3f} ({r[1]:.3f}-{r[2]:.3f})" for d, r in ratios.items()}
            print(f"{name:<18} {shown['learner']:>20} {shown['watch']:>20}   steps {ratios['learner'][3]} / "
                  f"{ratios['watch'][3]}; every: learner {ratios['learner'][4]}, watch {ratios['watch'][4]}",
                  flush=True)
    print("model_overhead " + " ".join(f"{k}={v:.3f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
