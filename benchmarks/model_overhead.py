"""What the default statistics cost on a user's model, eager and compiled, in the Learner and in watch().

    python benchmarks/model_overhead.py [--repeats 3] [--chunks 6] [--chunk 16] [--bs 128] [--quick]

Cells: two models x eager/compiled x two drivers, each the default statistics (a row every 4th step from
the first 64 items of the batch) against the same training without them:
    simple      convscope's simple_cnn (with BatchNorm) on real MNIST, 1x28x28
    resnet      the torchvision-style ResNet of tests/stats/_user_models.py on real Fashion-MNIST, zero-padded
                to 32x32 and repeated to 3 channels
    compiled    torch.compile(model) (inductor); its warm-up (the first chunks, both graph variants) untimed
    learner     convscope's Learner with ActivationStats() against the same Learner without it
    watch       a hand-written loop inside convscope.watch(model) against the same loop without it
Method: the two contenders of a cell start from the same weights, take the same batches, and live in one
process; they take turns every `chunk` steps (a multiple of 4, so each turn holds as many recorded rows),
so both see the same machine state. A cell's ratio is its summed seconds with statistics over its summed
seconds without; the figure is the median over repeats (each repeat alternates which contender goes first).
The Learner's turns are fits of `chunk` steps each, so both of its contenders pay a fit's start and end once
per turn (and the statistics their attach and flush there, which a real run pays once per epoch).
Last line: `model_overhead simple=<r> resnet=<r> simple_compiled=<r> resnet_compiled=<r>`, each the worse of
the Learner's and watch()'s ratio for that cell.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import REPO

sys.path.insert(0, str(REPO / "tests" / "stats"))  # the user-style models live beside the tests that use them
from _user_models import TorchvisionResNet, fashion_rgb32  # noqa: E402

MODELS = ("simple", "resnet")


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


class LearnerContender:
    def __init__(self, model: torch.nn.Module, data: Chunks, stats: bool, compiled: bool) -> None:
        from convscope.stats.activations import ActivationStats
        from convscope.train import Learner

        self.learn = Learner(model, data, cbs=[ActivationStats()] if stats else [], opt_func="sgd", lr=0.01)
        if compiled:
            self.learn.train_model = torch.compile(model)

    def turn(self) -> None:
        self.learn.fit(1)

    def close(self) -> None:
        pass


class WatchContender:
    def __init__(self, model: torch.nn.Module, data: Chunks, stats: bool, compiled: bool) -> None:
        import convscope

        self.model, self.data = model, data
        self.forward = torch.compile(model) if compiled else model
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

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


def cell(model: str, compiled: bool, driver: str, data, args) -> float:
    """Median over repeats of (seconds with statistics) / (seconds without), taking turns every chunk."""
    make = LearnerContender if driver == "learner" else WatchContender
    base = build(model)
    ratios = []
    for repeat in range(args.repeats):
        with_stats = make(copy.deepcopy(base), Chunks(*data, args.bs, args.chunk), True, compiled)
        without = make(copy.deepcopy(base), Chunks(*data, args.bs, args.chunk), False, compiled)
        pair = (with_stats, without) if repeat % 2 == 0 else (without, with_stats)
        seconds = {id(with_stats): 0.0, id(without): 0.0}
        for turn in range(args.warmup + args.chunks):
            for contender in pair:
                start = time.perf_counter()
                contender.turn()
                if turn >= args.warmup:
                    seconds[id(contender)] += time.perf_counter() - start
        with_stats.close()
        without.close()
        ratios.append(seconds[id(with_stats)] / seconds[id(without)])
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=6, help="timed turns per contender and repeat")
    parser.add_argument("--chunk", type=int, default=16, help="steps per turn (a multiple of 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed turns first (compilation)")
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="one repeat of two short turns: checks it runs")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.chunks, args.chunk, args.warmup = 1, 2, 4, 1
    if args.chunk % 4:
        parser.error("--chunk must be a multiple of 4 (the default statistics record every 4th step)")
    torch.set_num_threads(torch.get_num_threads())  # the machine's cores, as the other benchmarks leave it
    results: dict[str, float] = {}
    print(f"{'cell':<18} {'learner':>8} {'watch':>8}   (seconds with statistics / without)")
    for model in MODELS:
        data = load(model)
        for compiled in (False, True):
            name = model + ("_compiled" if compiled else "")
            ratios = {driver: cell(model, compiled, driver, data, args) for driver in ("learner", "watch")}
            results[name] = max(ratios.values())
            print(f"{name:<18} {ratios['learner']:>8.3f} {ratios['watch']:>8.3f}", flush=True)
    print("model_overhead " + " ".join(f"{k}={v:.3f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
