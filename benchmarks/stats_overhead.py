"""What recording activation statistics costs: training time and memory, side by side in one run.

Contenders, each repeat in a fresh process, interleaved, real MNIST, simple_cnn + BN, bs 512, one
epoch of fit_one_cycle on the CPU (no validation):
    none     no statistics
    exact    ActivationStats(with_hist=True, every=1, sample=None) on every layer with parameters
    default  ActivationStats() with its default settings (every layer with parameters + activations)
    naive    the straightforward way: forward hooks reading each statistic with .item() and the histogram
             with .cpu(), every step (how fastai's callback works)
Last line: `stats_overhead exact=<ratio> default=<ratio> naive=<ratio> extra_mb=<MB>`; ratios are
median seconds over the `none` median; extra_mb is the median peak-RSS increase of `exact` over `none`.

    python benchmarks/stats_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from _common import describe, run_worker

BS, LR = 512, 0.06
CONTENDERS = ("none", "exact", "default", "naive")


class NaiveStats:
    """Per-step host reads, as in a straightforward implementation (and fastai's ActivationStats)."""

    def __init__(self, model: torch.nn.Module) -> None:
        from convscope.train import Callback

        self.rows: list[list[float]] = []
        self.hists: list[torch.Tensor] = []
        modules = [m for m in model.modules() if not list(m.children()) and list(m.parameters(recurse=False))]
        outer = self

        class Hooker(Callback):
            def before_fit(self) -> None:
                self.handles = [m.register_forward_hook(outer.hook) for m in modules]

            def after_fit(self) -> None:
                for h in self.handles:
                    h.remove()

        self.callback = Hooker()

    def hook(self, module, inputs, output) -> None:
        if not module.training:
            return
        o = output.detach().float()
        self.rows.append([o.mean().item(), o.std().item(), (o <= 0.05).float().mean().item()])
        self.hists.append(torch.histc(o, 40, 0, 10).cpu())


def worker(kind: str) -> dict[str, float]:
    from convscope.data.batches import DeviceBatches, normalize_images
    from convscope.data.sources import load_dataset
    from convscope.models.cnn import simple_cnn
    from convscope.stats import ActivationStats
    from convscope.train import Learner

    data = load_dataset("mnist")
    x, _, _ = normalize_images(data.train_images)
    torch.manual_seed(0)
    model = simple_cnn()
    cbs = []
    if kind == "exact":
        param_layers = [m for m in model.modules() if not list(m.children()) and list(m.parameters(recurse=False))]
        cbs = [ActivationStats(with_hist=True, every=1, sample=None, modules=param_layers)]
    elif kind == "default":
        cbs = [ActivationStats()]
    elif kind == "naive":
        cbs = [NaiveStats(model).callback]
    learn = Learner(model, DeviceBatches(x, data.train_labels, BS, shuffle=True, drop_last=True, seed=0), None,
                    cbs=cbs)
    learn.create_opt()  # outside the timed region for every contender (see train_speed.py)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    learn.fit_one_cycle(1, LR)
    seconds = time.perf_counter() - start
    if kind in ("exact", "default"):
        _ = learn.activation_stats.mean  # include turning the buffers into arrays
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mb": rss_after / 1024, "growth_mb": (rss_after - rss_before) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", choices=CONTENDERS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    results: dict[str, list[dict[str, float]]] = {k: [] for k in CONTENDERS}
    for r in range(args.repeats):
        order = CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]
        for kind in order:
            res = run_worker(__file__, ["--worker", kind])
            results[kind].append(res)
            print(f"repeat {r + 1} {kind:8s} {res['seconds']:6.2f} s  peak {res['peak_mb']:7.1f} MB", flush=True)
    med = {k: statistics.median(v["seconds"] for v in results[k]) for k in CONTENDERS}
    for kind in CONTENDERS:
        print(f"{kind:8s} seconds: {describe([v['seconds'] for v in results[kind]])}")
    peak = {k: statistics.median(v["peak_mb"] for v in results[k]) for k in CONTENDERS}
    print("peak RSS MB (median): " + ", ".join(f"{k} {peak[k]:.1f}" for k in CONTENDERS))
    ratio = {k: med[k] / med["none"] for k in CONTENDERS}
    extra = peak["exact"] - peak["none"]
    print(f"stats_overhead exact={ratio['exact']:.3f} default={ratio['default']:.3f} "
          f"naive={ratio['naive']:.3f} extra_mb={extra:.1f}")


if __name__ == "__main__":
    main()
