"""Where a training step's time goes on a GPU: the bare loop, then convscope's parts added one at a time.

    python benchmarks/gpu_breakdown.py [--steps 120] [--device cuda] [--out DIR]

On a GPU the book's simple_cnn at bs 512 is tiny work: the GPU waits for the CPU to launch its kernels,
so a step costs what its Python and its kernel launches cost, and every extra small op shows. This trains
the book recipe (real MNIST on the device, AdamW, 1cycle lr 0.1) for `--steps` steps after 30 warm-up
steps in each of these set-ups, twice each in turn, and prints milliseconds per step (the device is
synchronised at both ends of the timed window) and kernels launched per step (torch's profiler, 16 steps):

    bare          torch's AdamW + OneCycleLR in a plain loop (benchmarks/_common.py)
    learner       convscope's Learner + fit_one_cycle, no other callback
    +guard        + NonFiniteGuard (reads its device-side flag every 16 steps)
    +stats        + ActivationStats() at its defaults (every 4th step recorded)
    +stats every=1   every step recorded: the cost of one recorded row, undiluted
    +stats no grad   ActivationStats(grad_stats=False)

Then the epoch-end costs of `convscope.experiments.run_training` (validation, the checkpoint and statistics
written at the end of every epoch), from a 2-epoch book run. `--out` writes the profiler's op table of
the `+stats every=1` set-up there. Last line: `gpu_breakdown bare_ms=<ms> learner_ms=<ms> guard_ms=<ms>
stats_ms=<ms> stats_every1_ms=<ms> kernels_bare=<n> kernels_stats=<n>` (on one line).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import bare_optimizer

WARMUP = 30


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def data(dev: torch.device):
    from convscope.data.batches import DeviceBatches, normalize_images
    from convscope.data.sources import load_dataset

    d = load_dataset("mnist")
    x, _, _ = normalize_images(d.train_images, device=dev)
    y = d.train_labels.to(dev)
    return x, y, DeviceBatches(x, y, 512, shuffle=True, drop_last=True)


def bare_ms(dev: torch.device, steps: int, profile: bool = False) -> tuple[float, float]:
    import torch.nn.functional as F

    from convscope.models.cnn import simple_cnn

    x, y, _ = data(dev)
    torch.manual_seed(0)
    model = simple_cnn().to(dev)
    opt, sched = bare_optimizer(model, 0.1, 10_000)
    perm = torch.randperm(len(x), device=dev)

    def step(i: int) -> None:
        idx = perm[(i % 117) * 512 : (i % 117 + 1) * 512]
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    for i in range(WARMUP):
        step(i)
    sync(dev)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(dev)
    ms = (time.perf_counter() - start) / steps * 1e3
    return ms, (count_kernels(dev, step) if profile else float("nan"))


def count_kernels(dev: torch.device, step, n: int = 16, table: Path | None = None) -> float:
    """Kernels launched per step over n steps (CPU ops per step where there is no GPU)."""
    prof = _start_profile(dev)
    for i in range(n):
        step(i)
    sync(dev)
    prof.__exit__(None, None, None)
    return _kernels(dev, prof, n, table)


def learner_ms(dev: torch.device, steps: int, parts: str, profile: bool = False,
               table: Path | None = None) -> tuple[float, float]:
    from convscope.models.cnn import simple_cnn
    from convscope.stats.activations import ActivationStats
    from convscope.train import Callback, CancelFitException, Learner
    from convscope.train.guard import NonFiniteGuard

    _, _, dl = data(dev)
    result: dict[str, float] = {}

    class Clock(Callback):
        order = -1000

        def before_batch(self) -> None:
            it = self.learn.train_iter
            if it == WARMUP:
                sync(dev)
                self.start = time.perf_counter()
            if it == WARMUP + steps:
                sync(dev)
                result["ms"] = (time.perf_counter() - self.start) / steps * 1e3
                if not profile:
                    raise CancelFitException
                self.prof = _start_profile(dev)
            if profile and it == WARMUP + steps + 16:
                sync(dev)
                self.prof.__exit__(None, None, None)
                result["kernels"] = _kernels(dev, self.prof, 16, table)
                raise CancelFitException

    cbs: list = [Clock()]
    if parts != "learner":
        cbs.append(NonFiniteGuard())
    if parts == "stats":
        cbs.append(ActivationStats())
    elif parts == "stats_every1":
        cbs.append(ActivationStats(every=1))
    elif parts == "stats_nograd":
        cbs.append(ActivationStats(grad_stats=False))
    torch.manual_seed(0)
    learn = Learner(simple_cnn(), dl, None, cbs=cbs, device=dev)
    learn.fit_one_cycle(-(-(WARMUP + steps + 20) // len(dl)), 0.1)
    return result["ms"], result.get("kernels", float("nan"))


def _start_profile(dev: torch.device):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    prof = profile(activities=acts)
    prof.__enter__()
    return prof


def _kernels(dev: torch.device, prof, n: int, table: Path | None) -> float:
    events = prof.events()
    if dev.type == "cuda":
        k = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        k = sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None)
    if table is not None:
        table.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=60))
    return k / n


def epoch_end_costs(dev: torch.device) -> None:
    """Seconds of each epoch's training steps, validation and the rest of its end, in run_training()'s path."""
    from convscope.config import TrainConfig
    from convscope.experiments import run_training
    from convscope.train import Callback

    marks: list[tuple[str, float]] = []

    class Marks(Callback):
        order = 1000  # after the run saver's epoch-end writes

        def _mark(self, what: str) -> None:
            sync(dev)
            marks.append((what, time.perf_counter()))

        def before_train(self) -> None:
            self._mark("train")

        def before_validate(self) -> None:
            self._mark("validate")

        def after_validate(self) -> None:
            self._mark("epoch end")

        def after_epoch(self) -> None:
            self._mark("done")

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_training(TrainConfig(epochs=2, lr=0.1, device=str(dev), out=out, name="r"), cbs=[Marks()])
        total = time.perf_counter() - start
    parts = [f"{a} {1e3 * (tb - ta):.0f} ms" for (a, ta), (_, tb) in zip(marks, marks[1:]) if a != "done"]
    print(f"run_training() book, 2 epochs: {'; '.join(parts)}; whole call incl. data and report {total:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="folder for the profiler's op table")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --device cpu for a (slow) dry run")
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    print(name, torch.__version__)
    setups = ["learner", "guard", "stats", "stats_every1", "stats_nograd"]
    ms: dict[str, list[float]] = {s: [] for s in ["bare", *setups]}
    kernels: dict[str, float] = {}
    table = Path(args.out) / "gpu_ops_every1.txt" if args.out else None
    for r in range(2):
        m, k = bare_ms(dev, args.steps, profile=r == 0)
        ms["bare"].append(m)
        kernels.setdefault("bare", k)
        for s in setups:
            m, k = learner_ms(dev, args.steps, s, profile=r == 0,
                              table=table if s == "stats_every1" else None)
            ms[s].append(m)
            kernels.setdefault(s, k)
    for s, v in ms.items():
        print(f"{s:14s} {statistics.median(v):7.2f} ms/step  ({' '.join(f'{x:.2f}' for x in v)})  "
              f"{kernels[s]:6.1f} kernels/step")
    epoch_end_costs(dev)
    med = {s: statistics.median(v) for s, v in ms.items()}
    print(f"gpu_breakdown bare_ms={med['bare']:.2f} learner_ms={med['learner']:.2f} guard_ms={med['guard']:.2f} "
          f"stats_ms={med['stats']:.2f} stats_every1_ms={med['stats_every1']:.2f} "
          f"kernels_bare={kernels['bare']:.0f} kernels_stats={kernels['stats']:.0f}")


if __name__ == "__main__":
    main()
