"""How often the diagnosis is right: injected faults and healthy controls on real MNIST / Fashion-MNIST.

    python benchmarks/fault_bench.py                 # held-out seeds 2-6: the figures in docs/fault_bench.md
    python benchmarks/fault_bench.py --seeds 0,1     # the tuning split the thresholds were chosen on
    python benchmarks/fault_bench.py --quick         # a few cases, one seed, short runs (CI)

Method. Every case is a short real training run through `run_training` (what `convscope train` runs: the
book's simple_cnn, or a small torchvision-style ResNet from fault_models.py, on the CPU), with the
statistics recorded every STATS_EVERY steps and the rules run while it trains (LiveFindings). A fault case
injects one plain mistake a user could make: a setting (lr 100x too high, weight decay 1000x, no
BatchNorm at a constant lr 0.06 with bs 64...), a model factory written wrongly (fault_models.py: sigmoid
activations, zero or 10x init, biases of -5, softmax before cross-entropy, every parameter frozen,
dropout 0.9, 0-255 inputs), or a label mistake through the Python API (labels shuffled against their
images, a callback here). Each case states its ground truth: the fault class, the rule names that count
as a detection of it, and the layer where the fault sits in one layer.

Measured per fault kind, over its seeds:
  detected   a finding of severity high or medium (the issue's ">= warning": convscope's severities are
             high / medium / low / info, and low and info ask for no urgent change) whose rule is one the
             case names, in the diagnosis after training or while it trained;
  localised  among detected runs of a case with a layer: the detecting finding names that layer;
  detect     the step that finding was first true while training, as a fraction of the run's steps
             (1.0: only after training);
  fixed      among detected runs: the run trained again with its findings' changes applied (what
             `convscope rerun --apply-remedies` does, `experiments.rerun.remedied`, with the same injected
             fault, which no setting removes) reaches the accuracy of the case's healthy control (its mean
             over the same seeds) within 1 point. A run whose findings change no setting is not fixed.
Healthy controls (book recipe, fast recipe, Fashion-MNIST, no BatchNorm at a sane lr, bs 64, bs 4096,
the ResNet) count as false-positive runs when any finding of severity high or medium appears, after
training or while it trained, or when one is called healthy below 2x chance accuracy.
Last line: `fault_bench recall=<r> false_positive_runs=<n> localised=<r> median_detect_frac=<f> fixed=<r>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # fault_models, as --model names it

STATS_EVERY = 2  # a row every 2 steps: the live rules see a fault within a few steps of its appearing
ACTING = ("high", "medium")
TUNING_SEEDS = (0, 1)
HELD_OUT_SEEDS = (2, 3, 4, 5, 6)

# Ground truth: the rules that say a run has each fault class (its symptom, with a remedy for that cause).
LR_HIGH = ("update_ratio_high", "weights_growing", "loss_diverging", "loss_not_finite", "gradient_not_finite",
           "exploding_gradients",
           "exploding_activations", "loss_oscillating", "collapse_cycles", "near_zero_activations", "not_learning")
LR_LOW = ("update_ratio_low", "not_learning", "still_learning")
COLLAPSE = ("near_zero_activations", "collapse_cycles", "near_zero_growing", "vanishing_gradients", "not_learning",
            "loss_diverging", "no_signal")
SCALE = ("input_scale", "init_scale", "loss_above_chance", "exploding_activations", "vanishing_activations",
         "exploding_gradients", "update_ratio_high", "near_zero_activations", "loss_diverging", "loss_not_finite",
         "not_learning", "collapse_cycles")
SATURATED = ("saturated_activations", "vanishing_gradients", "not_learning", "still_learning")
NO_GRADIENT = ("dead_at_init", "vanishing_gradients", "near_zero_activations", "frozen_parameters", "not_learning")
DEAD = ("dead_at_init", "near_zero_activations", "near_zero_growing", "collapse_cycles")
OUTPUTS = ("loss_floor",)
LABELS = ("no_signal", "not_learning")
FROZEN = ("frozen_parameters", "not_learning")
WD_HIGH = ("weight_decay_high", "update_ratio_high", "not_learning", "near_zero_activations", "vanishing_gradients")
DROPOUT = ("dropout_high", "train_loss_above_valid")
NOISY = ("batchnorm_small_batch", "exploding_gradients", "loss_oscillating", "update_ratio_high", "loss_diverging",
         "not_learning",
         "collapse_cycles",
         "near_zero_activations")


@dataclass(frozen=True)
class Case:
    name: str
    fault: str | None  # the fault class; None: a healthy control
    settings: dict[str, Any]  # TrainConfig settings
    injection: str  # how the fault is made, in words (docs/fault_bench.md's table)
    rules: tuple[str, ...] = ()  # the rules that count as its detection
    layer: str | None = None  # the layer the fault sits in (a finding's layer must start with it)
    control: str = "book"  # the healthy control whose accuracy a fixed rerun must reach
    labels: str | None = None  # "shuffled": labels permuted against their images at every batch
    quick: bool = False  # in --quick


BOOK: dict[str, Any] = {}  # TrainConfig's defaults: BN, bs 512, fit_one_cycle(1, 0.06), full MNIST
NOBN = {"bn": False, "lr": 0.01}  # no BatchNorm at a sane lr
BS64 = {"bs": 64, "limit_train": 20000}
RESNET = {"model": "fault_models:resnet", "bs": 128, "limit_train": 8192, "lr": 0.01}

CONTROLS = (
    Case("book", None, BOOK, "the fastai book's recipe (BN, bs 512, fit_one_cycle(1, 0.06))", quick=True),
    Case("fast", None, {"recipe": "fast", "epochs": 3, "lr": 0.1, "channels_last": True, "head": "linear",
                        "crop": 20, "shift": 1, "freeze": {"conv1": 0.3, "conv2": 0.8}},
         "recipe_settings('fast'): crop 20, linear head, conv1/conv2 frozen part-way, 3 epochs"),
    Case("fashion", None, {"dataset": "fashion-mnist"}, "the book recipe on Fashion-MNIST"),
    Case("nobn", None, NOBN, "no BatchNorm, fit_one_cycle(1, 0.01)"),
    Case("bs64", None, BS64, "the book recipe at bs 64 (20,000 images)"),
    Case("fashion_bs64", None, {"dataset": "fashion-mnist", **BS64}, "the book recipe on Fashion-MNIST at bs 64 "
         "(20,000 images)"),
    Case("bs4096", None, {"bs": 4096, "epochs": 2, "lr": 0.1, "limit_train": 40960}, "bs 4096, fit_one_cycle(2, 0.1) "
         "(40,960 images: 20 steps)"),
    Case("resnet", None, RESNET, "a torchvision-style ResNet (3 basic blocks, BN), bs 128, lr 0.01 (8,192 images)"),
)

FAULTS = (
    Case("lr_high", "lr too high", {"lr": 6.0}, "lr 6 (100x the book's)", LR_HIGH),
    Case("lr_low", "lr too low", {"lr": 6e-5}, "lr 6e-5 (1/1000 of the book's)", LR_LOW),
    Case("book_no_bn", "activations collapse", {"bn": False, "schedule": "constant", "lr": 0.06, **BS64},
         "the book's failing case: no BN, constant lr 0.06, bs 64", COLLAPSE, control="bs64", quick=True),
    Case("fashion_no_bn", "activations collapse", {"dataset": "fashion-mnist", "bn": False, "schedule": "constant",
                                                   "lr": 0.06, **BS64},
         "the book's failing case on Fashion-MNIST", COLLAPSE, control="fashion_bs64"),
    Case("unnormalised", "input scale", {**NOBN, "model": "fault_models:unnormalised_cnn"},
         "0-255 pixels into the no-BN CNN", SCALE, control="nobn"),
    Case("sigmoid", "saturating activations", {**NOBN, "model": "fault_models:sigmoid_cnn"},
         "nn.Sigmoid instead of nn.ReLU, no BN", SATURATED, control="nobn"),
    Case("zero_init", "initialisation", {**NOBN, "model": "fault_models:zero_init_cnn"},
         "every weight and bias 0, no BN", NO_GRADIENT, control="nobn"),
    Case("big_init", "initialisation", {**NOBN, "model": "fault_models:big_init_cnn"},
         "every weight 10x its default init, no BN", SCALE, control="nobn"),
    Case("negative_bias", "dead units", {**NOBN, "model": "fault_models:negative_bias_cnn"},
         "conv biases -5, no BN", DEAD, control="nobn"),
    Case("softmax_twice", "loss does not fit the outputs", {"model": "fault_models:softmax_cnn"},
         "nn.Softmax as the last layer, then cross-entropy", OUTPUTS),
    Case("shuffled_labels", "no signal in the labels", BOOK, "labels permuted against their images", LABELS,
         labels="shuffled", quick=True),
    Case("frozen_all", "frozen parameters", {"model": "fault_models:frozen_cnn"},
         "requires_grad_(False) on every block but the last (a from-scratch body)", FROZEN, quick=True),
    Case("wd_high", "weight decay too high", {"wd": 10.0}, "weight decay 10 (1000x the default)", WD_HIGH),
    Case("dropout", "regularisation too strong", {"model": "fault_models:dropout_cnn"},
         "nn.Dropout(0.9) after every hidden block", DROPOUT),
    Case("bs2", "batch too small for the lr", {"bs": 2, "limit_train": 20000},
         "bs 2 at the book's lr 0.06, 20,000 images (bs 1 cannot train BatchNorm's 1x1 last layer)", NOISY,
         control="bs64"),
    Case("resnet_lr_high", "lr too high", {**RESNET, "lr": 3.0}, "the ResNet at lr 3 (300x)", LR_HIGH,
         control="resnet"),
    Case("resnet_frozen_stem", "frozen parameters", {**RESNET, "model": "fault_models:frozen_stem_resnet"},
         "the ResNet's stem conv frozen (requires_grad_(False) on the wrong module)", FROZEN, layer="stem",
         control="resnet"),
    Case("dead_conv2", "dead units", {**NOBN, "model": "fault_models:dead_conv2_cnn"},
         "conv2's bias -5 (one layer), no BN", DEAD, layer="conv2", control="nobn"),
)


class ShuffledLabels:
    """A callback that permutes each training batch's labels against its images (no signal left)."""

    def __new__(cls, seed: int):
        from convscope.train.callback import Callback

        class _Shuffled(Callback):
            order = -30  # before ActivationStats and the loss see the batch

            def before_fit(self) -> None:
                self.gen = torch.Generator().manual_seed(seed)

            def before_batch(self) -> None:
                if self.learn.training:
                    yb = self.learn.yb
                    self.learn.yb = yb[torch.randperm(len(yb), generator=self.gen).to(yb.device)]

        return _Shuffled()


def train(case: Case, seed: int, out: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run of `case` (with `settings` instead of its own when given): accuracy, findings, first steps."""
    from convscope.config import TrainConfig
    from convscope.diagnose import diagnose
    from convscope.experiments import run_training
    from convscope.experiments.live_findings import LiveFindings
    from convscope.runs import load_run
    from convscope.stats.activations import ActivationStats

    kind = "run" if settings is None else "rerun"
    settings = dict(case.settings if settings is None else settings)
    cfg = TrainConfig(**settings, seed=seed, device="cpu", out=out, name=f"{case.name}-{seed}-{kind}",
                      stats_every=STATS_EVERY)
    live = LiveFindings(cfg.to_dict(), budget=None)  # every 2% of the steps, whatever a check costs
    cbs = [ActivationStats(every=STATS_EVERY), live]
    if case.labels == "shuffled":
        cbs.append(ShuffledLabels(seed))
    start = time.perf_counter()
    result = run_training(cfg, cbs=cbs, stats=False)  # no report.html: the benchmark reads the findings itself
    run = load_run(result.run_dir)
    findings = live.found_at(diagnose(run))
    steps = result.learn.total_steps
    return {"accuracy": float(result.metrics[-1]["accuracy"]) if result.metrics else float("nan"),
            "steps": steps, "seconds": time.perf_counter() - start, "checks": live.checks,
            "findings": [f.to_dict() for f in findings], "settings": settings,
            "cfg": cfg, "probe": probe(run)}


def probe(run: Any) -> dict[str, Any]:
    """The numbers the rules' thresholds are about, for the tuning split (--json)."""
    import numpy as np

    loss = np.asarray(run.steps["loss"], dtype=float)
    k = max(1, len(loss) // 10)
    out: dict[str, Any] = {"loss_first": float(loss[:k].mean()), "loss_prev": float(loss[-2 * k:-k].mean()),
                           "loss_last": float(loss[-k:].mean()), "loss_min": float(np.nanmin(loss)),
                           "loss_cv_last": float(loss[-k:].std() / max(1e-12, loss[-k:].mean())),
                           "valid_loss": run.metrics[-1].get("valid_loss") if run.metrics else None}
    st = run.activation_stats
    n = st.n_steps
    mid = slice(n // 4, max(n // 4 + 1, 3 * n // 4))
    for i, (name, kind) in enumerate(zip(st.layers, st.kinds)):
        u = st.update_ratio[mid, i]
        out[name] = {"kind": kind, "upd": float(np.nanmedian(u)) if np.isfinite(u).any() else None,
                     "nz_end": float(np.nanmean(st.near_zero[-max(1, n // 4):, i])),
                     "mean_end": float(np.nanmean(st.mean[-max(1, n // 4):, i])),
                     "std_end": float(np.nanmean(st.std[-max(1, n // 4):, i])),
                     "grad": float(np.nanmedian(st.grad_norm[:, i])) if np.isfinite(st.grad_norm[:, i]).any() else None,
                     "frozen0": bool(st.frozen[0, i])}
    return out


def judge(case: Case, res: dict[str, Any]) -> dict[str, Any]:
    """Detection, localisation and detect fraction of one fault run (or the false findings of a control)."""
    from convscope.runs.findings import Finding

    findings = [Finding.from_dict(d) for d in res["findings"]]
    acting = [f for f in findings if f.severity in ACTING]
    if case.fault is None:
        healthy_below_chance = any(f.rule == "healthy" for f in findings) and res["accuracy"] < 0.2
        return {"false": [f.rule for f in acting], "false_positive": bool(acting) or healthy_below_chance}
    hits = [f for f in acting if f.rule in case.rules]
    if not hits:
        return {"detected": False, "rules": [f.rule for f in acting]}
    first = min(hits, key=lambda f: (f.found_at is None, f.found_at or 0))
    frac = 1.0 if first.found_at is None else first.found_at / max(1, res["steps"])
    localised = None
    if case.layer is not None:
        localised = any((f.layer or "").startswith(case.layer) for f in hits)
    return {"detected": True, "rule": first.rule, "detect_frac": frac, "localised": localised,
            "rules": [f.rule for f in acting]}


def rerun_settings(case: Case, res: dict[str, Any]) -> dict[str, Any] | None:
    """The case's settings with its findings' changes applied (as `convscope rerun --apply-remedies`), or
    None when the findings change nothing."""
    from dataclasses import fields

    from convscope.config import TrainConfig
    from convscope.experiments.rerun import remedied
    from convscope.runs.findings import Finding

    cfg = res["cfg"]
    new, applied, _ = remedied(cfg, [Finding.from_dict(d) for d in res["findings"]])
    if not applied:
        return None
    names = {f.name for f in fields(TrainConfig)} - {"seed", "device", "out", "name", "stats_every"}
    return {k: getattr(new, k) for k in names if getattr(new, k) != getattr(TrainConfig(), k) or k in case.settings}


def run_bench(cases: list[Case], controls: list[Case], seeds: tuple[int, ...], out: str,
              log: Any = print) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for case in [*controls, *cases]:
        rows[case.name] = []
        for seed in seeds:
            res = train(case, seed, out)
            verdict = judge(case, res)
            rows[case.name].append({**res, **verdict, "seed": seed})
            log(f"{case.name:20s} seed {seed} acc {res['accuracy']:.4f} {res['seconds']:5.1f} s "
                f"{json.dumps({k: v for k, v in verdict.items()})}")
    control_acc = {c.name: statistics.mean(r["accuracy"] for r in rows[c.name]) for c in controls}
    for case in cases:
        for r in rows[case.name]:
            r["fixed"] = None
            if not r["detected"]:
                continue
            settings = rerun_settings(case, r)
            if settings is None:
                r["fixed"] = False
                continue
            again = train(case, r["seed"], out, settings)
            target = control_acc.get(case.control, control_acc.get("book"))
            r["fixed"] = again["accuracy"] >= target - 0.01
            r["rerun_accuracy"] = again["accuracy"]
            log(f"{case.name:20s} seed {r['seed']} rerun acc {again['accuracy']:.4f} (control {target:.4f}) "
                f"fixed {r['fixed']}")
    return {"rows": rows, "control_acc": control_acc}


def summarise(cases: list[Case], controls: list[Case], result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    fault_rows = [r for c in cases for r in rows[c.name]]
    detected = [r for r in fault_rows if r["detected"]]
    with_layer = [r for c in cases if c.layer for r in rows[c.name] if r["detected"]]
    fixed = [r for r in detected if r["fixed"] is not None]
    # The faults that are settings (no model factory, no label change): the only ones a rerun can remove.
    setting = [r for c in cases if "model" not in c.settings and c.labels is None for r in rows[c.name]
               if r["detected"] and r["fixed"] is not None]
    return {
        "recall": len(detected) / max(1, len(fault_rows)),
        "false_positive_runs": sum(r["false_positive"] for c in controls for r in rows[c.name]),
        "localised": sum(bool(r["localised"]) for r in with_layer) / max(1, len(with_layer)),
        "median_detect_frac": statistics.median([r["detect_frac"] for r in detected]) if detected else float("nan"),
        "fixed": sum(bool(r["fixed"]) for r in fixed) / max(1, len(fixed)),
        "fixed_setting_faults": sum(bool(r["fixed"]) for r in setting) / max(1, len(setting)),
        "control_runs": sum(len(rows[c.name]) for c in controls), "fault_runs": len(fault_rows),
        "detected_runs": len(detected),
    }


def table(cases: list[Case], controls: list[Case], result: dict[str, Any]) -> str:
    """The markdown tables of docs/fault_bench.md."""
    rows = result["rows"]
    lines = ["| fault | class | injection | rules that count | detected | localised | detect frac (median) | "
             "fixed | accuracy (median) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cases:
        rs = rows[c.name]
        det = [r for r in rs if r["detected"]]
        loc = "n/a" if c.layer is None else f"{sum(bool(r['localised']) for r in det)}/{len(det)} ({c.layer})"
        frac = f"{statistics.median(r['detect_frac'] for r in det):.2f}" if det else "-"
        fixed = f"{sum(bool(r['fixed']) for r in det)}/{len(det)}" if det else "-"
        lines.append(f"| {c.name} | {c.fault} | {c.injection} | {', '.join(c.rules)} | {len(det)}/{len(rs)} | {loc} | "
                     f"{frac} | {fixed} | {statistics.median(r['accuracy'] for r in rs):.4f} |")
    lines += ["", "| control | what | runs with a high/medium finding | accuracy (mean) |", "| --- | --- | --- | --- |"]
    for c in controls:
        rs = rows[c.name]
        false = sorted({rule for r in rs for rule in r["false"]})
        lines.append(f"| {c.name} | {c.injection} | {sum(r['false_positive'] for r in rs)}/{len(rs)}"
                     f"{' (' + ', '.join(false) + ')' if false else ''} | {result['control_acc'][c.name]:.4f} |")
    return "\n".join(lines)


def merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows of several --json files as one result (the control accuracies: their means over all runs)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        for name, rs in part["rows"].items():
            rows.setdefault(name, []).extend(rs)
    control_acc = {name: statistics.mean(r["accuracy"] for r in rs) for name, rs in rows.items()
                   if rs and "false_positive" in rs[0]}
    return {"rows": rows, "control_acc": control_acc}


def quick_cases() -> tuple[list[Case], list[Case]]:
    """--quick: the cases marked quick, on 6,400 training images at bs 128 (50 steps; bs 64 where the case says)."""
    def short(c: Case) -> Case:
        return Case(**{**c.__dict__, "settings": {**c.settings, "limit_train": 6400, "bs": c.settings.get("bs", 128)}})

    return [short(c) for c in FAULTS if c.quick], [short(c) for c in CONTROLS if c.quick]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=",".join(map(str, HELD_OUT_SEEDS)),
                    help="comma-separated seeds (default: the held-out 2-6; the tuning split is 0,1)")
    ap.add_argument("--quick", action="store_true", help="a few short cases, one seed (CI)")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--json", default=None, help="write every run's results here")
    ap.add_argument("--keep", default=None, help="write the run folders here (default: a temporary folder)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="combine the --json files of runs over different seeds (e.g. run in two processes) and "
                         "print their summary")
    ap.add_argument("--table", action="store_true", help="print the markdown tables of docs/fault_bench.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.quick:
        cases, controls = quick_cases()
        seeds = seeds[:1]
    else:
        cases, controls = list(FAULTS), list(CONTROLS)
    if args.cases:
        names = set(args.cases.split(","))
        cases = [c for c in cases if c.name in names]
        controls = [c for c in controls if c.name in names or any(f.control == c.name for f in cases)]
    if args.merge:
        result = merged([json.loads(Path(path).read_text()) for path in args.merge])
        present = set(result["rows"])
        cases, controls = [c for c in cases if c.name in present], [c for c in controls if c.name in present]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = args.keep or tmp
            result = run_bench(cases, controls, seeds, out, log=lambda line: print(line, flush=True))
    summary = summarise(cases, controls, result)
    if args.json:
        rows = {k: [{kk: vv for kk, vv in r.items() if kk != "cfg"} for r in v] for k, v in result["rows"].items()}
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows,
                                               "control_acc": result["control_acc"]}, indent=1, default=str))
    if args.table:
        print(table(cases, controls, result))
    print(json.dumps(summary))
    print(f"fault_bench recall={summary['recall']:.3f} false_positive_runs={summary['false_positive_runs']} "
          f"localised={summary['localised']:.3f} median_detect_frac={summary['median_detect_frac']:.3f} "
          f"fixed={summary['fixed']:.3f}")


if __name__ == "__main__":
    main()
