"""Diagnosis rules: pure functions from a run's recorded data to findings. No model, no GPU.

Each rule reads what a run folder holds (see runs/run.py) -- metrics, per-step loss/lr, and the
activation statistics when recorded -- and returns Findings. Thresholds are named constants with the
reason for each; they were calibrated on real MNIST runs of the book's simple CNN (healthy: BatchNorm +
1cycle; failing: no BatchNorm, constant lr 0.06, bs 64).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from convscope.runs.findings import SEVERITIES, Finding, Findings
from convscope.runs.noise_scale import NOISE_SCALE_FILE, ratio_of_means
from convscope.runs.store import read_npz

# --- activations -------------------------------------------------------------------------------------
TAIL = 0.25  # "stays": judged on the last quarter of the recorded steps (after the early transients)
NEAR_ZERO_HIGH = 0.95  # >= 95% of a layer's values <= 0.05: its ReLU passes almost nothing on
DEAD_CHANNELS_HIGH = 0.5  # half the channels <= 0 over a whole batch: half the filters do nothing
NEAR_ZERO_GROWTH = 0.3  # near-zero share up 30 points from the first to the last quarter: units dying
NEAR_ZERO_GROWN_TO = 0.8  # ... and ending above 80%, so the loss of signal matters
LIVE_MIN_ROWS = 8  # while training, a layer "stays" near zero only over the last quarter of >= 8 rows (2+)
COLLAPSE_ENTER = 0.9  # a collapse episode starts when near-zero share jumps above 90% ...
COLLAPSE_LEAVE = 0.6  # ... from below 60% (and ends when it falls back below 60%)
COLLAPSE_MIN_EPISODES = 2  # one collapse can be a transient; two or more is the book's no-warmup cycle
DEPTH_RATIO = 10.0  # std changing 10x between consecutive weight layers: exploding/vanishing with depth
STD_EXPLODED = 1e3  # activations with std above 1e3 overflow soon in float16 and saturate losses
# --- gradients ---------------------------------------------------------------------------------------
GRAD_VANISHED = 1e-7  # a weight layer whose gradient norm is below this learns nothing
GRAD_RATIO_FIRST_LAST = 1e-3  # first layer's gradient 1000x smaller than the last's: vanishing with depth
GRAD_EXPLODED = 1e3  # gradient norms this large make single steps undo training
# |dW|/|W| per step around the lr peak. AdamW moves each weight by about lr per step whatever its gradient,
# so the ratio is near lr / weight scale: 0.011-0.026 in the healthy controls of the fault benchmark's tuning
# seeds (book, fast, Fashion-MNIST, no-BN, bs 64 / 4096, ResNet), far above SGD's textbook ~1e-3.
# Too high: 3x the highest healthy run, the bs 4096 control at lr 0.1 (0.06-0.11 in its 20 steps; 0.1 was
# the threshold until two held-out bs 4096 runs crossed it). Under BatchNorm, AdamW's ratio limits itself at
# any lr (lr 6 on the book's CNN: 0.05-0.07, since its weights inflate; weights_growing says so), so this
# rule is for large rewrites of the weights at each step (weight decay 10: 0.16-0.2, bs 2 at lr 0.06).
UPDATE_TOO_HIGH = 0.3
UPDATE_TOO_LOW = 2e-3  # 5x below the lowest healthy run (0.011): the lr barely moves the weights
NOT_MOVING = 1e-5  # a not-learning loss with updates below this: the lr (not the activations) is the cause
# Loss scaling (fp16): torch's GradScaler skips each step whose scaled gradient overflowed and halves its
# scale, then doubles it after 2000 clean steps. A healthy run overflows in its first few steps (until the
# scale has come down from 65536) and then about once per 2000 steps: far below 10% of its steps.
SCALER_SKIPS_HIGH = 0.1
LOSS_SCALED_PRECISIONS = ("fp16", "16-mixed", "16")  # config precision names: convscope's, Lightning's
# --- loss and metrics --------------------------------------------------------------------------------
LOSS_EDGE = 0.1  # "start" and "end" of training: the first and last 10% of steps
NOT_LEARNING = 0.9  # end loss >= 90% of start loss: training did not reduce the loss
DIVERGED = 1.5  # end loss 1.5x the best smoothed loss: training is going the wrong way
OVERFIT_VALID_RISE = 1.25  # validation loss 25% above its best while training loss keeps falling
# While training (diagnose/live.py): "the loss did not fall" is decided once a quarter of the run is done, when
# one-cycle's warm-up (pct_start 0.25) is over and the lr has been at its peak; earlier, a flat start is normal.
NOT_LEARNING_DECIDED = 0.25

WEIGHT_KINDS = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d")
NORM_KINDS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "SyncBatchNorm")

Rule = Callable[[Any], list[Finding]]
# "Lower the lr": to the LR finder's recommendation for the rerun's model and data, and at most half the lr
# (experiments/rerun.py); a fixed factor (x0.1) left lr 3 on the ResNet at 0.3, still far too high.
LOWER_LR = {"lr": "find:lower"}
RAISE_LR = {"lr": "find:higher"}
ACT_REMEDY = ("add BatchNorm (--bn), warm the learning rate up (fit_one_cycle) or lower it; check the "
              "initialisation (kaiming for ReLU)")


def _config(run: Any) -> dict[str, Any]:
    config = getattr(run, "config", None)
    return config if isinstance(config, dict) else {}


def _activation_change(run: Any) -> dict[str, Any]:
    """The settings ACT_REMEDY names, as far as this run's config says they are not set yet: BatchNorm
    (only convscope's simple_cnn has the switch), 1cycle's warm-up, and else a lower lr."""
    config = _config(run)
    change: dict[str, Any] = {}
    if config.get("bn") is False and not config.get("model"):
        change["bn"] = True
    if config.get("schedule") not in (None, "one-cycle"):
        change["schedule"] = "one-cycle"
    return change or dict(LOWER_LR)


def _bn_change(run: Any) -> dict[str, Any]:
    """BatchNorm, where this run's model is simple_cnn without it; else nothing a setting can do."""
    config = _config(run)
    return {"bn": True} if config.get("bn") is False and not config.get("model") else {}


def _complete(run: Any) -> bool:
    """Whether `run` is a finished run (a run folder) or the statistics so far of one still training
    (diagnose/live.py's RunSoFar): a rule judged on the end of the run waits for its end."""
    return bool(getattr(run, "complete", True))


def _progress(run: Any) -> float:
    """The share of the run's steps taken (1.0 for a finished run)."""
    return float(getattr(run, "progress", 1.0))


def _n_classes(run: Any) -> int:
    classes = (_config(run).get("data") or {}).get("classes") if isinstance(_config(run).get("data"), dict) else None
    return len(classes) if isinstance(classes, list) and len(classes) >= 2 else 10


def _stats(run: Any):
    """The run's activation statistics, None when it has none. A damaged stats.npz raises RunError, on
    purpose: a diagnosis that silently skipped the activation rules would read as "healthy"."""
    if not getattr(run, "has_stats", True):
        return None  # a run without statistics: the activation rules have nothing to say
    try:
        return run.activation_stats
    except AttributeError:  # an object without the statistics API
        return None


def _span(steps: np.ndarray) -> tuple[int, int] | None:
    return (int(steps[0]), int(steps[-1])) if len(steps) else None


def _tail(n: int) -> slice:
    return slice(max(0, n - max(1, int(round(n * TAIL)))), n)


def _head(n: int) -> slice:
    return slice(0, max(1, int(round(n * TAIL))))


def _signal_layers(stats) -> list[int]:
    """Layers whose near-zero share means something: not normalisation outputs (centred by design)."""
    return [i for i, k in enumerate(stats.kinds) if k not in NORM_KINDS]


def near_zero_activations(run: Any) -> list[Finding]:
    stats = _stats(run)
    if stats is None or stats.n_steps == 0:
        return []
    n, tail, head = stats.n_steps, _tail(stats.n_steps), _head(stats.n_steps)
    if not _complete(run) and n < LIVE_MIN_ROWS:  # while training: "stays" needs a tail of a few rows
        return []
    stuck, growing = [], []
    for i in _signal_layers(stats):
        end_nz, start_nz = float(np.mean(stats.near_zero[tail, i])), float(np.mean(stats.near_zero[head, i]))
        end_dead = float(np.mean(stats.dead[tail, i]))
        if end_nz >= NEAR_ZERO_HIGH or end_dead >= DEAD_CHANNELS_HIGH:
            stuck.append((i, end_nz, end_dead, start_nz))
        elif n >= 8 and _complete(run) and end_nz - start_nz >= NEAR_ZERO_GROWTH and end_nz >= NEAR_ZERO_GROWN_TO:
            growing.append((i, end_nz, end_dead, start_nz))
    findings = []
    steps = _span(stats.steps[tail])
    if stuck:
        i, nz, dead, start = stuck[0]
        findings.append(Finding(
            "near_zero_activations", "high", stats.layers[i], steps,
            f"{len(stuck)} layer(s) carry almost no signal over the last {TAIL:.0%} of training; first: "
            f"{stats.layers[i]} with {nz:.0%} of values <= 0.05 and {dead:.0%} of channels dead "
            f"(first steps: {start:.0%} near zero); later layers inherit it",
            ACT_REMEDY, tuple(stats.layers[j] for j, *_ in stuck), _activation_change(run)))
    if growing:
        i, nz, dead, start = growing[0]
        findings.append(Finding(
            "near_zero_growing", "medium", stats.layers[i], _span(stats.steps),
            f"near-zero share of {stats.layers[i]} grew from {start:.0%} to {nz:.0%} during training "
            f"({len(growing)} layer(s) alike): units are dying as it trains",
            "lower the peak learning rate or use fit_one_cycle; add BatchNorm; consider LeakyReLU",
            tuple(stats.layers[j] for j, *_ in growing), _activation_change(run)))
    return findings


def collapse_episodes(series: np.ndarray) -> list[int]:
    """Indices where the series jumps above COLLAPSE_ENTER after being below COLLAPSE_LEAVE."""
    starts, armed = [], False
    for j, v in enumerate(series):
        if v < COLLAPSE_LEAVE:
            armed = True
        elif v >= COLLAPSE_ENTER and armed:
            starts.append(j)
            armed = False
    return starts


def collapse_cycles(run: Any) -> list[Finding]:
    stats = _stats(run)
    if stats is None or stats.n_steps < 8:
        return []
    hits = []
    for i in _signal_layers(stats):
        starts = collapse_episodes(stats.near_zero[:, i])
        if len(starts) >= COLLAPSE_MIN_EPISODES:
            hits.append((i, starts))
    if not hits:
        return []
    i, starts = max(hits, key=lambda h: len(h[1]))
    at = ", ".join(str(int(stats.steps[j])) for j in starts[:6])
    return [Finding(
        "collapse_cycles", "high", stats.layers[i], (int(stats.steps[starts[0]]), int(stats.steps[starts[-1]])),
        f"activations of {stats.layers[i]} collapsed to near zero {len(starts)} times (>= {COLLAPSE_ENTER:.0%} "
        f"of values <= 0.05) at steps {at}; {len(hits)} layer(s) show the surge-and-collapse cycle",
        "start with a low learning rate and warm up (fit_one_cycle), lower the peak lr, add BatchNorm",
        tuple(stats.layers[j] for j, _ in hits), _activation_change(run))]


def depth_scale(run: Any) -> list[Finding]:
    stats = _stats(run)
    if stats is None or stats.n_steps == 0:
        return []
    weights = [i for i, k in enumerate(stats.kinds) if k in WEIGHT_KINDS]
    tail = _tail(stats.n_steps)
    findings = []
    std = np.nanmedian(stats.std[tail], axis=0)
    for a, b in zip(weights, weights[1:]):
        if std[a] <= 0 or not np.isfinite(std[a]) or not np.isfinite(std[b]):
            continue
        ratio = std[b] / std[a]
        if ratio >= DEPTH_RATIO or ratio <= 1 / DEPTH_RATIO:
            kind = "exploding" if ratio > 1 else "vanishing"
            findings.append(Finding(
                f"{kind}_activations", "medium", stats.layers[b], _span(stats.steps[tail]),
                f"activation std goes from {std[a]:.3g} ({stats.layers[a]}) to {std[b]:.3g} ({stats.layers[b]}): "
                f"x{ratio:.3g} in one layer",
                "use a variance-preserving initialisation (kaiming), add BatchNorm between layers",
                (stats.layers[a], stats.layers[b]), _bn_change(run)))
    big = [i for i in weights if np.isfinite(std[i]) and std[i] >= STD_EXPLODED]
    if big:
        findings.append(Finding(
            "exploding_activations", "high", stats.layers[big[0]], _span(stats.steps[tail]),
            f"activation std {std[big[0]]:.3g} in {stats.layers[big[0]]}", "lower the lr; add BatchNorm",
            tuple(stats.layers[i] for i in big), {**LOWER_LR, **_bn_change(run)}))
    return findings


def gradient_health(run: Any) -> list[Finding]:
    stats = _stats(run)
    if stats is None or stats.n_steps == 0:
        return []
    weights = [i for i, k in enumerate(stats.kinds)
               if k in WEIGHT_KINDS and not np.all(np.isnan(stats.grad_norm[:, i]))]
    if not weights:
        return []
    g = stats.grad_norm[:, weights]
    findings = []
    if _loss_scaled(run):
        # An infinite norm at a step the scaler skipped is the scaler at work, not an exploding gradient.
        overflowed = np.isinf(g).any(axis=1)
        g = g[~overflowed]
        if overflowed.mean() > SCALER_SKIPS_HIGH:
            findings.append(Finding(
                "loss_scale_overflows", "medium", None, _span(stats.steps[overflowed]),
                f"{int(overflowed.sum())} of {len(overflowed)} recorded steps overflowed in fp16 and were skipped by "
                "the loss scaler", "lower the lr, or train in bf16 (--precision bf16), whose range needs no scaling",
                change={"precision": "bf16"}))
        if len(g) == 0:
            return findings
    if not np.all(np.isfinite(g[~np.isnan(g)])):
        return [Finding("exploding_gradients", "high", None, _span(stats.steps),
                        "a gradient norm was infinite", "lower the lr; clip gradients; check the loss for NaN",
                        change=LOWER_LR)]
    med = np.nanmedian(g, axis=0)
    vanished = [weights[j] for j, v in enumerate(med) if v < GRAD_VANISHED]
    if vanished:
        findings.append(Finding(
            "vanishing_gradients", "high", stats.layers[vanished[0]], _span(stats.steps),
            f"median gradient norm {med[weights.index(vanished[0])]:.2g} in {stats.layers[vanished[0]]}: "
            f"{len(vanished)} weight layer(s) receive no gradient", ACT_REMEDY,
            tuple(stats.layers[i] for i in vanished), _activation_change(run)))
    elif med[-1] > 0 and med[0] / med[-1] < GRAD_RATIO_FIRST_LAST:
        findings.append(Finding(
            "vanishing_gradients", "medium", stats.layers[weights[0]], _span(stats.steps),
            f"gradient norm of {stats.layers[weights[0]]} is {med[0] / med[-1]:.2g}x "
            f"that of {stats.layers[weights[-1]]}",
            "add BatchNorm or residual connections; use kaiming initialisation", change=_bn_change(run)))
    if np.nanmax(g) >= GRAD_EXPLODED:
        j = int(np.nanargmax(np.nanmax(g, axis=0)))
        findings.append(Finding(
            "exploding_gradients", "medium", stats.layers[weights[j]], _span(stats.steps),
            f"gradient norm reached {np.nanmax(g):.3g} in {stats.layers[weights[j]]}",
            "lower the lr or clip gradients (torch.nn.utils.clip_grad_norm_)", change=LOWER_LR))
    findings += _update_ratio(stats, weights)
    return findings


def _loss_scaled(run: Any) -> bool:
    """Whether the run trained with fp16 loss scaling (convscope train, watch(scaler=...), Lightning)."""
    config = getattr(run, "config", None) or {}
    return bool(config.get("loss_scaling")) or str(config.get("precision")) in LOSS_SCALED_PRECISIONS


def _update_ratio(stats, weights: list[int]) -> list[Finding]:
    # The middle half of training is where the lr peaks under any usual schedule.
    n = stats.n_steps
    mid = slice(n // 4, max(n // 4 + 1, 3 * n // 4))
    u = stats.update_ratio[mid][:, weights]
    if np.all(np.isnan(u)):
        return []
    med = float(np.nanmedian(u))
    span = _span(stats.steps[mid])
    if med > UPDATE_TOO_HIGH:
        return [Finding("update_ratio_high", "medium", None, span,
                        f"median |weight update| / |weight| = {med:.2g} per step around the lr peak (~1e-3 is typical)",
                        "lower the (peak) learning rate", change=LOWER_LR)]
    if med < UPDATE_TOO_LOW and not _stuck_layers(stats):
        # Weights that hardly move while their layers carry signal: the lr. (Under collapsed activations the
        # updates are small because the gradients died: the activations' finding says so, not this one.)
        return [Finding("update_ratio_low", "medium", None, span,
                        f"median |weight update| / |weight| = {med:.2g} per step around the lr peak (healthy runs: "
                        f"{UPDATE_TYPICAL:g})", "raise the learning rate (run the LR finder)", change=RAISE_LR)]
    return []


UPDATE_TYPICAL = 0.02  # the healthy book recipe's median update ratio (tuning seeds): a too-low lr is raised to it


def _stuck_layers(stats) -> list[int]:
    tail = _tail(stats.n_steps)
    return [i for i in _signal_layers(stats) if float(np.nanmean(stats.near_zero[tail, i])) >= NEAR_ZERO_HIGH]


def loss_health(run: Any) -> list[Finding]:
    loss = np.asarray(run.steps.get("loss", []), dtype=np.float64)
    if len(loss) == 0:
        return []
    steps = np.asarray(run.steps.get("step", np.arange(len(loss))))
    if not np.all(np.isfinite(loss)):
        first = int(np.flatnonzero(~np.isfinite(loss))[0])
        return [Finding("loss_not_finite", "high", None, (int(steps[first]), int(steps[-1])),
                        f"training loss became {loss[first]} at step {int(steps[first])}",
                        "lower the lr; add BatchNorm; check the data for NaN/inf",
                        change={**LOWER_LR, **_bn_change(run)})]
    k = max(1, int(len(loss) * LOSS_EDGE))
    start, end = float(loss[:k].mean()), float(loss[-k:].mean())
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    findings = []
    decided = _complete(run) or _progress(run) >= NOT_LEARNING_DECIDED
    if len(loss) >= 20 and decided and end >= NOT_LEARNING * start:
        findings.append(Finding("not_learning", "high", None, _span(steps),
                                f"training loss went from {start:.3g} (first {LOSS_EDGE:.0%} of steps) to {end:.3g} "
                                f"(last {LOSS_EDGE:.0%}): it did not decrease",
                                "check the activations (near-zero findings), lower the lr or warm it up "
                                "(fit_one_cycle)", change=_not_learning_change(run)))
    elif len(loss) >= 20 and _complete(run) and end >= DIVERGED * float(smooth.min()):
        findings.append(Finding("loss_diverging", "high", None, _span(steps),
                                f"training loss ended at {end:.3g}, {end / smooth.min():.1f}x its best "
                                f"{smooth.min():.3g}",
                                "lower the learning rate or anneal it (fit_one_cycle)",
                                change=_activation_change(run) if "bn" not in _activation_change(run) else LOWER_LR))
    return findings


def _not_learning_change(run: Any) -> dict[str, Any]:
    """A loss that does not fall: a higher lr if the weights hardly move, else the activations' remedy."""
    stats = _stats(run)
    if stats is not None and stats.n_steps:
        weights = [i for i, k in enumerate(stats.kinds) if k in WEIGHT_KINDS]
        u = stats.update_ratio[:, weights]
        if weights and not np.all(np.isnan(u)) and float(np.nanmedian(u)) < NOT_MOVING:
            return dict(RAISE_LR)
    return _activation_change(run)


def _power_of_two(x: float) -> int:
    return int(2 ** round(np.log2(max(x, 1.0))))


def overfitting(run: Any) -> list[Finding]:
    if not _complete(run):
        return []
    rows = [m for m in run.metrics if "valid_loss" in m and "train_loss" in m]
    if len(rows) < 3:
        return []
    valid = np.array([m["valid_loss"] for m in rows], dtype=np.float64)
    train = np.array([m["train_loss"] for m in rows], dtype=np.float64)
    best = int(np.argmin(valid))
    if valid[-1] >= OVERFIT_VALID_RISE * valid[best] and train[-1] < train[best]:
        return [Finding("overfitting", "medium", None, None,
                        f"validation loss rose from {valid[best]:.3g} (epoch {best + 1}) to {valid[-1]:.3g} while "
                        f"training loss fell to {train[-1]:.3g}",
                        "train fewer epochs, add weight decay or data augmentation", change={"epochs": best + 1})]
    return []


BS_FAR = 4.0  # batch size 4x away from the critical batch size: worth changing (McCandlish et al., fig. 1)


def batch_size_advice(run: Any) -> list[Finding]:
    """Compare the batch size with the gradient noise scale measured in the run (noise_scale.npz), if any."""
    path = getattr(run, "path", None)
    if path is None or not (path / NOISE_SCALE_FILE).exists():
        return []
    ns = read_npz(path / NOISE_SCALE_FILE)
    g2, tr = np.asarray(ns.get("g2", [])), np.asarray(ns.get("tr_sigma", []))
    if len(g2) < 8:
        return []
    half = len(g2) // 2
    b_crit = float(ratio_of_means(g2[half:], tr[half:]))  # late in training, where it matters for speed
    bs = int(run.config.get("bs", 0) or 0)
    if not (np.isfinite(b_crit) and b_crit > 0 and bs > 0):
        return []
    span = (int(ns["step"][half]), int(ns["step"][-1]))
    evidence = (f"gradient noise scale B_simple ~ {b_crit:,.0f} over the second half of training "
                f"({len(g2) - half} measurements); batch size {bs}")
    if bs * BS_FAR < b_crit:
        return [Finding("batch_size_small", "low", None, span, evidence + ": well below the critical batch size",
                        f"a larger batch (up to ~{b_crit:,.0f}, memory permitting) would need fewer steps for the "
                        "same progress; scale the lr with it (convscope bs-sweep measures the trade-off)",
                        change={"bs": _power_of_two(min(b_crit, bs * BS_FAR))})]
    if bs > BS_FAR * b_crit:
        return [Finding("batch_size_large", "low", None, span, evidence + ": well above the critical batch size",
                        f"a smaller batch (~{b_crit:,.0f}) reaches the same loss with less compute per step",
                        change={"bs": _power_of_two(max(b_crit, bs / BS_FAR))})]
    return [Finding("batch_size_ok", "info", None, span, evidence + ": close to the critical batch size",
                    "nothing to change")]


def not_seen(run: Any) -> list[Finding]:
    """Say what the statistics could not see: activations applied as functions (F.relu on a conv's output has
    no module to hook, so that layer's post-activation values were never recorded) and watched layers that
    never ran in a recorded step. Information, not a fault: nothing here makes the other findings wrong,
    but a reader must not take the missing layers for healthy ones."""
    stats = _stats(run)
    unseen = list(getattr(stats, "unseen", None) or [])
    if not unseen:
        return []
    names = tuple(dict.fromkeys(name for name, _ in unseen))
    evidence = "; ".join(f"{name}: {reason}" for name, reason in unseen)
    return [Finding("not_seen", "info", None, None, f"not recorded: {evidence}",
                    "to see an activation, make it a module (nn.ReLU() instead of F.relu) and watch it", names)]


# --- rules the fault benchmark (benchmarks/fault_bench.py) showed missing ----------------------------
# Each threshold below was chosen on the benchmark's tuning seeds (0, 1) and is reported on seeds 2-6
# (docs/fault_bench.md); the reason for each is beside it.
FROZEN_MIN_ROWS = 4  # a layer frozen in each of its first 4 recorded rows, from step 0: it was never trained
NO_SIGNAL_BAND = 0.05  # the loss never 5% below ln(n_classes), the loss of a uniform guess: nothing learned ...
NO_SIGNAL_DECIDED = 0.1  # ... decided after 10% of the run (healthy MNIST runs are far below it by then)
NO_SIGNAL_MIN_STEPS = 20
SATURATION_HIGH = 0.8  # var / (m - lo)(hi - m) >= 0.8: most values sit at the bounds (Bhatia-Davis: 1 = all)
SATURATION_LOW_END = 0.95  # or >= 95% of a sigmoid's values <= 0.05: saturated at its low end
BOUNDED_KINDS = {"Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0), "Hardsigmoid": (0.0, 1.0)}
OUTPUT_BOUNDED = ("Softmax", "Sigmoid", "Softmin")  # a model ending in these gives cross-entropy probabilities
# Decoupled weight decay multiplies the weights by (1 - lr * wd) at each step: over the run that is
# exp(-sum(lr * wd)). Above 4.6 (1% of the weights left from decay alone) the decay, not the data, sets them.
WD_DECAY_HIGH = 4.6
STILL_FALLING = 0.2  # the last 10% of steps' loss 20% below the 10% before: it stopped while still learning
# Loss std over its mean over the last 10% of steps: each step undoes the last. Per-step losses of small
# batches at a low loss are noisy by themselves (bs 64 controls of the tuning seeds: 0.48-0.5), so 2x that.
OSCILLATING_CV = 1.0
GAP_HIGH = 3.0  # training loss (last 10% of steps) 3x the validation loss: training sees a far harder task
GROWTH_HIGH = 60.0  # a conv's output std before BatchNorm 60x its first value (healthy: <= 22x, tuning seeds)
INPUT_STD_HIGH = 10.0  # the first layer's output std >= 10 at step 0 (normalised inputs give ~0.6): raw pixels
LOSS_ABOVE_CHANCE = 2.0  # training loss >= 2 ln(n_classes): confidently wrong, logits far too large
EVAL_GAP = 1.2  # validation loss 1.2x the training loss of the last 10% of steps (healthy controls: <= 1.04) ...
SMALL_BATCH = 16  # ... in a BatchNorm model trained at bs <= 16: its running statistics do not fit
DROPOUT_HIGH = 0.7  # a dropout layer dropping >= 70% of what it is given (p read as the share kept)
NEAR_CHANCE = 2.0  # accuracy below 2x chance (1 / n_classes) at the end: the run learned (almost) nothing
CONSTANT_STD = 1e-8  # a layer output with std below this at step 0 is one constant (zero weights)
INIT_GAIN_HIGH = 2.0  # at step 0, weight layers growing the std >= 2x each (default init: 0.35-0.6x) ...
INIT_LOGITS_STD = 10.0  # ... up to logits of std >= 10 (default: ~0.1-0.4): softmax saturated from step 0


def frozen_parameters(run: Any) -> list[Finding]:
    """Weight layers frozen (requires_grad False, or never moved) from the first step: never trained. A
    layer frozen part-way (the fast recipe's conv1 at 30%) trained first, and is not this finding."""
    stats = _stats(run)
    if stats is None or stats.n_steps < FROZEN_MIN_ROWS or int(stats.steps[0]) > 0:
        return []
    weights = [i for i, k in enumerate(stats.kinds) if k in WEIGHT_KINDS]
    head = slice(0, FROZEN_MIN_ROWS)
    frozen = [i for i in weights if bool(np.all(stats.frozen[head, i]))
              or (bool(np.all(stats.update_ratio[head, i] == 0)))]
    if not frozen:
        return []
    severity = "high" if len(frozen) * 2 >= len(weights) else "medium"
    names = tuple(stats.layers[i] for i in frozen)
    # requires_grad False is the cause (unfreeze); a trainable layer that never moved got no gradient, whose
    # cause other findings name (dead_at_init, vanishing_gradients).
    change = {"unfreeze": True} if any(bool(np.all(stats.frozen[head, i])) for i in frozen) else {}
    return [Finding(
        "frozen_parameters", severity, names[0], _span(stats.steps),
        f"{len(frozen)} of {len(weights)} weight layer(s) never changed from step 0 (requires_grad False or no "
        f"update): {', '.join(names[:4])}{'...' if len(names) > 4 else ''}; they keep their random initialisation",
        "unfreeze them (requires_grad_(True)); freeze only layers that were trained before (a pretrained body)",
        names, change)]


def no_signal(run: Any) -> list[Finding]:
    """The loss stays at ln(n_classes), a uniform guess's, while the weights do move: the labels (or the
    loss) give the model nothing to learn from. Weights that hardly move are the lr's finding, not this."""
    loss = np.asarray(run.steps.get("loss", []), dtype=np.float64)
    if len(loss) < NO_SIGNAL_MIN_STEPS or not np.all(np.isfinite(loss)):
        return []
    if not _complete(run) and _progress(run) < NO_SIGNAL_DECIDED:
        return []
    chance = float(np.log(_n_classes(run)))
    k = max(1, int(len(loss) * LOSS_EDGE))
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    if float(smooth.min()) < (1 - NO_SIGNAL_BAND) * chance:
        return []
    stats = _stats(run)
    if stats is not None and stats.n_steps:
        weights = [i for i, kd in enumerate(stats.kinds) if kd in WEIGHT_KINDS]
        u = stats.update_ratio[:, weights]
        if weights and (np.all(np.isnan(u)) or float(np.nanmedian(u)) < UPDATE_TOO_LOW):
            return []
    steps = np.asarray(run.steps.get("step", np.arange(len(loss))))
    return [Finding(
        "no_signal", "high", None, _span(steps),
        f"training loss never went below {smooth.min():.3g} (ln {_n_classes(run)} = {chance:.3g}, a uniform guess) "
        f"in {len(loss)} steps while the weights moved: nothing in the labels is being learned",
        "check that the labels belong to their images (a shuffled or misaligned label array) and that the loss "
        "gets the model's logits")]


def saturated_activations(run: Any) -> list[Finding]:
    """Sigmoid/tanh layers whose values sit at their bounds (where their gradient is ~0)."""
    stats = _stats(run)
    if stats is None or stats.n_steps < 4:
        return []
    tail = _tail(stats.n_steps)
    hits = []
    for i, kind in enumerate(stats.kinds):
        if kind not in BOUNDED_KINDS:
            continue
        lo, hi = BOUNDED_KINDS[kind]
        m, sd = float(np.nanmean(stats.mean[tail, i])), float(np.nanmean(stats.std[tail, i]))
        room = (m - lo) * (hi - m)
        index = sd * sd / room if room > 0 else 1.0
        low_end = float(np.nanmean(stats.near_zero[tail, i])) if lo == 0.0 else 0.0
        if index >= SATURATION_HIGH or low_end >= SATURATION_LOW_END:
            hits.append((i, index, low_end))
    if not hits:
        return []
    i, index, low_end = hits[0]
    return [Finding(
        "saturated_activations", "high", stats.layers[i], _span(stats.steps[tail]),
        f"{stats.layers[i]} ({stats.kinds[i]}) is saturated: variance {index:.0%} of the most its mean allows, "
        f"{low_end:.0%} of values <= 0.05; {len(hits)} layer(s) alike", "use ReLU (or GELU) activations; add "
        "BatchNorm before them", tuple(stats.layers[j] for j, *_ in hits), {"activation": "relu"})]


def bounded_outputs(run: Any) -> list[Finding]:
    """The model's last layer is a softmax or sigmoid, and cross-entropy applies log-softmax again: the
    loss gets probabilities in [0, 1] as logits, so it cannot go below ln(1 + (n - 1) / e) and barely trains."""
    stats = _stats(run)
    if stats is None or not stats.kinds or stats.kinds[-1] not in OUTPUT_BOUNDED:
        return []
    if _config(run).get("source"):  # watch(), Lightning, fastai: the loss is the user's, not convscope's
        return []
    n = _n_classes(run)
    return [Finding(
        "loss_floor", "high", stats.layers[-1], _span(stats.steps),
        f"the model ends in {stats.kinds[-1]} ({stats.layers[-1]}) and cross-entropy applies log-softmax itself: "
        f"its inputs are probabilities, so the loss cannot go below {np.log(1 + (n - 1) / np.e):.3g}",
        "remove the final softmax/sigmoid: return logits (apply softmax only to show probabilities)",
        (stats.layers[-1],), {"remove": [stats.layers[-1]]})]


def weight_decay_high(run: Any) -> list[Finding]:
    """Weight decay that alone would shrink the weights to under 1% over the steps so far."""
    wd = _config(run).get("wd")
    lr = np.asarray(run.steps.get("lr", []), dtype=np.float64)
    if not isinstance(wd, (int, float)) or wd <= 0 or len(lr) == 0:
        return []
    decay = float(np.nansum(lr) * wd)
    if decay < WD_DECAY_HIGH:
        return []
    steps = np.asarray(run.steps.get("step", np.arange(len(lr))))
    return [Finding(
        "weight_decay_high", "high", None, _span(steps),
        f"weight decay {wd:g} at these learning rates multiplies the weights by exp(-{decay:.3g}) = "
        f"{np.exp(-decay):.2g} over {len(lr)} steps: the decay, not the data, sets them",
        "lower the weight decay (0.01 is AdamW's usual)",
        change={"wd": 0.01})]


def loss_trend(run: Any) -> list[Finding]:
    """At the end of a run: still falling steeply (stopped too early), or swinging from step to step."""
    if not _complete(run):
        return []
    loss = np.asarray(run.steps.get("loss", []), dtype=np.float64)
    if len(loss) < 40 or not np.all(np.isfinite(loss)):
        return []
    k = max(2, int(len(loss) * LOSS_EDGE))
    last, prev = loss[-k:], loss[-2 * k:-k]
    steps = np.asarray(run.steps.get("step", np.arange(len(loss))))
    findings = []
    cv = float(last.std() / max(1e-12, last.mean()))
    if cv >= OSCILLATING_CV:
        findings.append(Finding(
            "loss_oscillating", "medium", None, _span(steps[-k:]),
            f"training loss over the last {LOSS_EDGE:.0%} of steps swings by {cv:.0%} of its mean {last.mean():.3g}",
            "lower the learning rate or raise the batch size", change=LOWER_LR))
    elif float(last.mean()) <= (1 - STILL_FALLING) * float(prev.mean()):
        change = _not_learning_change(run) if _lr_too_low(run) else {"epochs": "x2"}
        findings.append(Finding(  # low: advice (the healthy ResNet control still fell 22% at its end)
            "still_learning", "low", None, _span(steps[-2 * k:]),
            f"training loss fell from {prev.mean():.3g} to {last.mean():.3g} over the last {2 * LOSS_EDGE:.0%} of "
            "the steps: the run stopped while still learning", "train longer, or at a higher learning rate",
            change=change))
    return findings


def _lr_too_low(run: Any) -> bool:
    return _not_learning_change(run) == RAISE_LR


def train_valid_gap(run: Any) -> list[Finding]:
    """Training loss far above validation loss at the end: training's task is much harder than the model's
    real one (dropout or augmentation far too strong)."""
    if not _complete(run) or not run.metrics:
        return []
    valid = run.metrics[-1].get("valid_loss")
    loss = np.asarray(run.steps.get("loss", []), dtype=np.float64)
    if not isinstance(valid, (int, float)) or not np.isfinite(valid) or valid <= 0 or len(loss) < 20:
        return []
    k = max(1, int(len(loss) * LOSS_EDGE))
    train = float(np.mean(loss[-k:]))
    if train < GAP_HIGH * valid:
        return []
    return [Finding(
        "train_loss_above_valid", "medium", None, None,
        f"training loss {train:.3g} (last {LOSS_EDGE:.0%} of steps) is {train / valid:.1f}x the validation loss "
        f"{valid:.3g}: training works on a much harder task than validation",
        "lower the dropout (p is the share dropped, not kept) or the augmentation")]


def weights_growing(run: Any) -> list[Finding]:
    """Under BatchNorm a conv's output scale does not matter to the network, so its growth is its weights'
    growth: AdamW at a far too high lr inflates them step after step (and so shrinks its effective lr)."""
    stats = _stats(run)
    if stats is None or stats.n_steps < 4:
        return []
    tail = _tail(stats.n_steps)
    grown = []
    for i, kind in enumerate(stats.kinds):
        if kind not in WEIGHT_KINDS or not any(k in NORM_KINDS for k in stats.kinds[i + 1:i + 3]):
            continue
        first, end = float(stats.std[0, i]), float(np.nanmean(stats.std[tail, i]))
        if first > 0 and np.isfinite(end) and end / first >= GROWTH_HIGH:
            grown.append((i, end / first))
    if not grown:
        return []
    i, ratio = max(grown, key=lambda g: g[1])
    return [Finding(
        "weights_growing", "medium", stats.layers[i], _span(stats.steps),
        f"the output std of {stats.layers[i]} (before its BatchNorm) grew {ratio:.0f}x since step 0: its weights "
        f"inflate at every step ({len(grown)} layer(s) alike)", "lower the learning rate", tuple(
            stats.layers[j] for j, _ in grown), LOWER_LR)]


def input_scale(run: Any) -> list[Finding]:
    """The first weight layer's output at step 0 far larger than normalised inputs give: unnormalised data."""
    stats = _stats(run)
    if stats is None or stats.n_steps == 0 or int(stats.steps[0]) > 0:
        return []
    weights = [i for i, k in enumerate(stats.kinds) if k in WEIGHT_KINDS]
    if not weights or not float(stats.std[0, weights[0]]) >= INPUT_STD_HIGH:
        return []
    i = weights[0]
    return [Finding(
        "input_scale", "medium", stats.layers[i], (int(stats.steps[0]), int(stats.steps[0])),
        f"{stats.layers[i]}'s output std at step 0 is {stats.std[0, i]:.3g} (normalised inputs give ~0.6 at the "
        "default initialisation): the inputs are not normalised", "normalise the inputs to mean 0, std 1 "
        "(convscope's data does; check a custom dataset or model wrapper)", (stats.layers[i],),
        {"normalize_input": stats.layers[i]})]


def loss_above_chance(run: Any) -> list[Finding]:
    """A training loss far above a uniform guess's: the model is confidently wrong (logits far too large)."""
    loss = np.asarray(run.steps.get("loss", []), dtype=np.float64)
    if len(loss) < 20 or not np.all(np.isfinite(loss)):
        return []
    if not _complete(run) and _progress(run) < NO_SIGNAL_DECIDED:
        return []
    k = max(1, int(len(loss) * LOSS_EDGE))
    chance = float(np.log(_n_classes(run)))
    end = float(loss[-k:].mean())
    if end < LOSS_ABOVE_CHANCE * chance:
        return []
    steps = np.asarray(run.steps.get("step", np.arange(len(loss))))
    return [Finding(
        "loss_above_chance", "high", None, _span(steps[-k:]),
        f"training loss {end:.3g} over the last {LOSS_EDGE:.0%} of steps, {end / chance:.1f}x a uniform guess's "
        f"ln {_n_classes(run)} = {chance:.3g}: the logits are far too large", "use the default (kaiming) "
        "initialisation, add BatchNorm, lower the learning rate", change={**_bn_change(run)} or LOWER_LR)]


def batchnorm_small_batch(run: Any) -> list[Finding]:
    """A BatchNorm model evaluated much worse than it trained, at a tiny batch: its running statistics,
    averaged over batches of a few images, do not describe the data it is evaluated on."""
    stats = _stats(run)
    bs = _config(run).get("bs")
    if not _complete(run) or not run.metrics or stats is None or not isinstance(bs, int) or bs > SMALL_BATCH:
        return []
    if not any(k in NORM_KINDS and k.startswith("BatchNorm") for k in stats.kinds):
        return []
    valid = run.metrics[-1].get("valid_loss")
    loss = np.asarray(run.steps.get("loss", []), dtype=np.float64)
    if not isinstance(valid, (int, float)) or len(loss) < 20:
        return []
    k = max(1, int(len(loss) * LOSS_EDGE))
    train, start = float(np.mean(loss[-k:])), float(np.mean(loss[:k]))
    if valid >= EVAL_GAP * train:
        evidence = (f"validation loss {valid:.3g} is {valid / train:.2f}x the training loss {train:.3g} of the last "
                    f"steps, with BatchNorm at batch size {bs}: its running statistics of {bs}-image batches do not "
                    "fit the data")
    elif train >= NOT_LEARNING * start:
        # The same cause seen in training itself: normalising by the statistics of a few images makes every
        # step's activations noise (bs 2 at the book's lr: the loss never fell, in the tuning seeds).
        evidence = (f"training loss went from {start:.3g} to {train:.3g} with BatchNorm at batch size {bs}: "
                    f"normalising each layer by the statistics of {bs} images leaves the steps too noisy to learn")
    else:
        return []
    return [Finding("batchnorm_small_batch", "medium", None, None, evidence,
                    "raise the batch size to 32 or more (scale the lr with it), or use GroupNorm", change={"bs": 32})]


def dropout_high(run: Any) -> list[Finding]:
    """A dropout layer that drops most of its input: p is the share dropped (TensorFlow 1's keep_prob is the
    share kept). Estimated from the zeros: 1 - (1 - zeros out) / (1 - zeros in), the layer before as its input."""
    stats = _stats(run)
    if stats is None or stats.n_steps < 2:
        return []
    tail = _tail(stats.n_steps)
    for i, kind in enumerate(stats.kinds):
        if not kind.startswith("Dropout") or i == 0:
            continue
        z_out, z_in = float(np.nanmean(stats.near_zero[tail, i])), float(np.nanmean(stats.near_zero[tail, i - 1]))
        if z_in >= 1 or not np.isfinite(z_out):
            continue
        p = 1 - (1 - z_out) / (1 - z_in)
        if p >= DROPOUT_HIGH:
            return [Finding(
                "dropout_high", "high", stats.layers[i], _span(stats.steps[tail]),
                f"{stats.layers[i]} zeroes {p:.0%} of its input while training ({z_out:.0%} of its outputs are ~0, "
                f"{z_in:.0%} of its inputs)", "lower the dropout probability: p is the share dropped (0.1-0.5 is "
                "usual)", (stats.layers[i],), {"dropout": _meant_dropout(p)})]
    return []


def _meant_dropout(p: float) -> float:
    """The p a user who wrote the share to keep meant (1 - p), within the usual 0.1-0.5."""
    return float(min(0.5, max(0.1, round(1.0 - p, 1))))


def dead_at_init(run: Any) -> list[Finding]:
    """A weight layer whose output is (almost) all <= 0.05 at step 0, before any update: the initialisation
    (weights or biases), not the training, left nothing to pass on. (Collapse while training starts from a
    healthy step 0: near_zero_activations.)"""
    stats = _stats(run)
    if stats is None or stats.n_steps == 0 or int(stats.steps[0]) > 0:
        return []
    # Near zero is not dead: a layer of small, centred outputs (a healthy no-BN network's logits at step 0)
    # has most values <= 0.05 too. Dead is all at one value (std 0: constant weights) or all below zero.
    negative = getattr(stats, "negative", None)
    dead = [i for i, k in enumerate(stats.kinds) if k in WEIGHT_KINDS and stats.ran[0, i]
            and float(stats.near_zero[0, i]) >= NEAR_ZERO_HIGH
            and (float(stats.std[0, i]) <= CONSTANT_STD
                 or (negative is not None and float(negative[0, i]) >= NEAR_ZERO_HIGH))]
    if not dead:
        return []
    i = dead[0]
    return [Finding(
        "dead_at_init", "high", stats.layers[i], (0, 0),
        f"at step 0, before any update, {float(stats.near_zero[0, i]):.0%} of {stats.layers[i]}'s outputs are "
        f"<= 0.05, all below zero or one constant (std {float(stats.std[0, i]):.3g}; {len(dead)} weight layer(s) "
        "alike): the initial weights or biases switch it off",
        "use the default initialisation (kaiming for ReLU, biases 0); never a constant or large negative bias",
        tuple(stats.layers[j] for j in dead), {"init": "default"})]


def init_scale(run: Any) -> list[Finding]:
    """Weights initialised far too large: at step 0 every weight layer (with no normalisation in between)
    multiplies the scale of its input, so the logits start huge. Default (kaiming-uniform) init shrinks the
    std from layer to layer (0.35-0.6x in the fault benchmark's no-BN CNN); its weights x10 grow it 3.3-4.2x."""
    stats = _stats(run)
    if stats is None or stats.n_steps == 0 or int(stats.steps[0]) > 0:
        return []
    weights = [i for i, k in enumerate(stats.kinds) if k in WEIGHT_KINDS and stats.ran[0, i]]
    pairs = [(a, b) for a, b in zip(weights, weights[1:]) if not any(k in NORM_KINDS for k in stats.kinds[a:b])]
    std = stats.std[0]
    gains = [float(std[b] / std[a]) for a, b in pairs if std[a] > 0 and np.isfinite(std[b])]
    if len(gains) < 2 or float(np.median(gains)) < INIT_GAIN_HIGH or not float(std[weights[-1]]) >= INIT_LOGITS_STD:
        return []
    last = weights[-1]
    return [Finding(
        "init_scale", "high", stats.layers[weights[0]], (0, 0),
        f"at step 0 each weight layer multiplies the std of its input by {np.median(gains):.2g} (median of "
        f"{len(gains)}), up to {float(std[last]):.3g} at {stats.layers[last]}: the initial weights are far too large",
        "use the default initialisation (kaiming: weights ~ 1/sqrt(fan_in)), not a fixed std of 1",
        tuple(stats.layers[i] for i in weights), {"init": "default"})]


def near_chance(run: Any) -> list[Finding]:
    """A finished run whose accuracy is near chance is never "healthy", whatever the other rules say."""
    if not _complete(run) or not run.metrics:
        return []
    acc = run.metrics[-1].get("accuracy")
    n = _n_classes(run)
    if not isinstance(acc, (int, float)) or acc >= NEAR_CHANCE / n:
        return []
    return [Finding("near_chance", "high", None, None,
                    f"accuracy {acc:.1%} at the end, chance is {1 / n:.0%}: the run learned (almost) nothing",
                    "see the other findings; check labels, the loss and the learning rate")]


RULES: tuple[Rule, ...] = (loss_health, near_zero_activations, collapse_cycles, depth_scale, gradient_health,
                           overfitting, batch_size_advice, not_seen, frozen_parameters, no_signal,
                           saturated_activations, bounded_outputs, weight_decay_high, loss_trend, train_valid_gap,
                           weights_growing, input_scale, loss_above_chance, batchnorm_small_batch, dropout_high,
                           near_chance, dead_at_init, init_scale)


def diagnose(run: Any, rules: tuple[Rule, ...] = RULES) -> Findings:
    """All findings for `run` (a `convscope.load_run` result or anything with the same attributes),
    most severe first; a single 'healthy' finding when no rule fires. A list that Jupyter shows as a table."""
    findings = [f for rule in rules for f in rule(run)]
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    if all(f.severity == "info" for f in findings):  # no finding asks for a change
        findings.append(Finding("healthy", "info", None, None,
                                "no rule fired: loss decreased, activations carry signal, gradients are in range",
                                "nothing to change"))
    return Findings(findings)
