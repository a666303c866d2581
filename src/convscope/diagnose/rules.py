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
COLLAPSE_ENTER = 0.9  # a collapse episode starts when near-zero share jumps above 90% ...
COLLAPSE_LEAVE = 0.6  # ... from below 60% (and ends when it falls back below 60%)
COLLAPSE_MIN_EPISODES = 2  # one collapse can be a transient; two or more is the book's no-warmup cycle
DEPTH_RATIO = 10.0  # std changing 10x between consecutive weight layers: exploding/vanishing with depth
STD_EXPLODED = 1e3  # activations with std above 1e3 overflow soon in float16 and saturate losses
# --- gradients ---------------------------------------------------------------------------------------
GRAD_VANISHED = 1e-7  # a weight layer whose gradient norm is below this learns nothing
GRAD_RATIO_FIRST_LAST = 1e-3  # first layer's gradient 1000x smaller than the last's: vanishing with depth
GRAD_EXPLODED = 1e3  # gradient norms this large make single steps undo training
UPDATE_TOO_HIGH = 3e-2  # |dW|/|W| per step above 3%: the lr rewrites weights each step (~1e-3 is typical)
UPDATE_TOO_LOW = 1e-5  # below 1e-5 at the peak of training: the lr is too small to move the weights
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

WEIGHT_KINDS = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d")
NORM_KINDS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "SyncBatchNorm")

Rule = Callable[[Any], list[Finding]]
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
    return change or {"lr": "x0.1"}


def _bn_change(run: Any) -> dict[str, Any]:
    """BatchNorm, where this run's model is simple_cnn without it; else nothing a setting can do."""
    config = _config(run)
    return {"bn": True} if config.get("bn") is False and not config.get("model") else {}


LOWER_LR = {"lr": "x0.1"}


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
    stuck, growing = [], []
    for i in _signal_layers(stats):
        end_nz, start_nz = float(np.mean(stats.near_zero[tail, i])), float(np.mean(stats.near_zero[head, i]))
        end_dead = float(np.mean(stats.dead[tail, i]))
        if end_nz >= NEAR_ZERO_HIGH or end_dead >= DEAD_CHANNELS_HIGH:
            stuck.append((i, end_nz, end_dead, start_nz))
        elif n >= 8 and end_nz - start_nz >= NEAR_ZERO_GROWTH and end_nz >= NEAR_ZERO_GROWN_TO:
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
    if med < UPDATE_TOO_LOW:
        return [Finding("update_ratio_low", "low", None, span,
                        f"median |weight update| / |weight| = {med:.2g} per step around the lr peak (~1e-3 is typical)",
                        "raise the learning rate (run the LR finder)", change={"lr": "x10"})]
    return []


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
    if len(loss) >= 20 and end >= NOT_LEARNING * start:
        findings.append(Finding("not_learning", "high", None, _span(steps),
                                f"training loss went from {start:.3g} (first {LOSS_EDGE:.0%} of steps) to {end:.3g} "
                                f"(last {LOSS_EDGE:.0%}): it did not decrease",
                                "check the activations (near-zero findings), lower the lr or warm it up "
                                "(fit_one_cycle)", change=_not_learning_change(run)))
    elif len(loss) >= 20 and end >= DIVERGED * float(smooth.min()):
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
        if weights and not np.all(np.isnan(u)) and float(np.nanmedian(u)) < UPDATE_TOO_LOW:
            return {"lr": "x10"}
    return _activation_change(run)


def _power_of_two(x: float) -> int:
    return int(2 ** round(np.log2(max(x, 1.0))))


def overfitting(run: Any) -> list[Finding]:
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


RULES: tuple[Rule, ...] = (loss_health, near_zero_activations, collapse_cycles, depth_scale, gradient_health,
                           overfitting, batch_size_advice, not_seen)


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
