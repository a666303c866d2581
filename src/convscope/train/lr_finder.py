"""The learning-rate range test (Leslie Smith; fastai's `lr_find`): a short mock training whose lr grows
exponentially each step, recording the smoothed loss, then everything put back as it was.

`lr_find(learn)` runs one sweep per repeat, each from the same saved start and on its own batch order,
reads fastai's four suggestions (`suggestions.py`) from each, and recommends an `lr_max` for
`fit_one_cycle` with a sentence saying why. The learner -- weights, BatchNorm statistics, optimizer
state, data order, torch's RNG, counters and the recorder -- is bit-identical afterwards, also when the
sweep raises, so a following fit gives exactly the losses it would have given without the test.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from convscope.config import check_whole_number
from convscope.data.batches import DeviceBatches
from convscope.dist.context import refuse_under_torchrun
from convscope.errors import ConfigError
from convscope.schedules.curves import Exponential
from convscope.schedules.suggestions import SUGGESTIONS, Suggestion, edge, suggest
from convscope.train.callback import Callback
from convscope.train.events import CancelFitException, CancelValidateException

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from convscope.train.learner import Learner


def check_sweep_args(start_lr: float, end_lr: float, num_it: int, repeats: int = 1, beta: float = 0.98) -> None:
    """Raise ConfigError for settings a sweep cannot run with (called before any work is done)."""
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    if start_lr >= end_lr:
        raise ConfigError(f"start_lr must be below end_lr, got start_lr={start_lr!r} >= end_lr={end_lr!r}")
    check_whole_number("num_it", num_it, 5, note="steps in the sweep")
    check_whole_number("repeats", repeats)
    if not 0 <= beta < 1:
        raise ConfigError(f"beta (loss smoothing) must be in [0, 1), got {beta!r}")


class LRFinder(Callback):
    """Set the lr of step i to start*(end/start)**(i/(num_it-1)), record the loss, stop after num_it
    steps or, with `stop_div`, once the smoothed loss is not finite or exceeds 4x the best so far.

    The loss is smoothed as fastai does: an exponential moving average with weight `beta`, divided by
    1 - beta**(i+1) so that the first steps are not pulled towards zero. Reading the loss each step is a
    host-device sync; the sweep needs it to know when to stop.
    """

    order = 10  # sets the lr in before_batch, like ParamScheduler

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                 stop_div: bool = True, beta: float = 0.98) -> None:
        check_sweep_args(start_lr, end_lr, num_it, beta=beta)
        self.curve = Exponential(start_lr, end_lr)
        self.num_it, self.stop_div, self.beta = num_it, stop_div, beta

    def before_fit(self) -> None:
        self.i, self.avg, self.best = 0, 0.0, math.inf
        self.lrs: list[float] = []
        self.losses: list[float] = []  # smoothed
        self.raw_losses: list[float] = []
        self.stop_reason = "ran all steps"

    def before_batch(self) -> None:
        if self.learn.training:
            self.learn.set_hyper("lr", self.curve(self.i / (self.num_it - 1)))

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        loss = float(self.learn.loss.detach())
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smooth = self.avg / (1 - self.beta ** (self.i + 1))
        self.lrs.append(self.learn.get_hyper("lr"))
        self.raw_losses.append(loss)
        self.losses.append(smooth)
        self.i += 1
        if self.stop_div and not math.isfinite(smooth):
            self.stop_reason = f"loss not finite at step {self.i - 1}"
            raise CancelFitException()
        self.best = min(self.best, smooth)
        if self.stop_div and smooth > 4 * self.best:
            self.stop_reason = f"smoothed loss above 4x its best at step {self.i - 1}"
            raise CancelFitException()
        if self.i >= self.num_it:
            raise CancelFitException()

    def before_validate(self) -> None:
        raise CancelValidateException()  # a sweep that spans epochs must not spend time validating


# --------------------------------------------------------------------------- saving and restoring
@dataclass
class _Snapshot:
    """What a sweep changes in the learner it sweeps on, taken before it and put back after it: the
    learner's state_dict (weights and BatchNorm statistics, optimizer, RNG streams, data order), and the
    two things a state_dict leaves out, the modules' train/eval modes and the gradients. The sweep runs
    on `learn.bare_copy()`, which shares the model, data and optimizer, so the learner's counters,
    callbacks and Recorder are never touched."""

    state: dict[str, Any]
    module_modes: list[bool]
    grads: list[torch.Tensor | None]
    loader_generator: torch.Tensor | None  # a DataLoader's own generator (not part of its state_dict)

    @classmethod
    def take(cls, learn: Learner) -> _Snapshot:
        gen = _loader_generator(learn.train_data)
        return cls(state=copy.deepcopy(learn.state_dict()),  # state_dict holds live tensors: copy them
                   module_modes=[m.training for m in learn.model.modules()],
                   grads=[None if p.grad is None else p.grad.clone() for p in learn.model.parameters()],
                   loader_generator=None if gen is None else gen.get_state())

    def restore(self, learn: Learner) -> None:
        learn.load_state_dict(copy.deepcopy(self.state))  # copies in place: the optimizer's parameters stay
        for m, mode in zip(learn.model.modules(), self.module_modes):
            m.training = mode
        for p, g in zip(learn.model.parameters(), self.grads):
            p.grad = None if g is None else g.clone()
        if self.loader_generator is not None:
            _loader_generator(learn.train_data).set_state(self.loader_generator)


def _loader_generator(data: Any) -> torch.Generator | None:
    """The generator that orders a DataLoader's batches, if it was given one (else torch's RNG does)."""
    gen = data.generator if isinstance(data, DataLoader) else None
    return gen if isinstance(gen, torch.Generator) else None


# --------------------------------------------------------------------------- results
@dataclass
class Sweep:
    """One sweep: the lr and loss (smoothed and raw) of each step, and the suggestions read from it."""

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggestions: dict[str, Suggestion]
    edge: Suggestion  # where the raw loss bottoms out (suggestions.edge)
    stop_reason: str
    order_seed: int | None  # None: the data's own next order

    def to_dict(self) -> dict[str, Any]:
        return {"lrs": self.lrs.tolist(), "losses": _json_floats(self.losses),
                "raw_losses": _json_floats(self.raw_losses), "stop_reason": self.stop_reason,
                "order_seed": self.order_seed,
                "suggestions": {k: _point(s) for k, s in self.suggestions.items()}, "edge": _point(self.edge)}


def _point(s: Suggestion) -> dict[str, Any]:
    return {"lr": s.lr, "index": s.index, "loss": s.loss}


def _json_floats(a: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in a]  # JSON has no NaN; None reads as null


@dataclass
class LRFindResult:
    """All sweeps, each suggestion's spread over them, and the recommended lr_max for fit_one_cycle."""

    sweeps: list[Sweep]
    settings: dict[str, Any]
    recommended_lr_max: float = field(init=False)
    reasoning: str = field(init=False)

    def __post_init__(self) -> None:
        self.recommended_lr_max, self.reasoning = recommend(self)

    def points(self, name: str) -> list[Suggestion]:
        """The suggestion `name` (one of suggestions.SUGGESTIONS, or 'edge') of each sweep."""
        return [sw.edge if name == "edge" else sw.suggestions[name] for sw in self.sweeps]

    def values(self, name: str) -> np.ndarray:
        """The lr of suggestion `name` in each sweep."""
        return np.array([p.lr for p in self.points(name)])

    @property
    def suggestions(self) -> dict[str, dict[str, float]]:
        """Per suggestion: median, min and max over the sweeps (the median of an even count is the
        geometric mean of the middle two: lrs live on a log scale)."""
        out = {}
        for name in [*self.sweeps[0].suggestions, "edge"]:
            v = self.values(name)
            out[name] = {"median": float(np.exp(np.median(np.log(v)))), "min": float(v.min()),
                         "max": float(v.max())}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "suggestions": self.suggestions,
                "recommended_lr_max": self.recommended_lr_max, "reasoning": self.reasoning,
                "sweeps": [s.to_dict() for s in self.sweeps]}

    def plot(self) -> Figure:
        from convscope.plots.schedules import plot_lr_find  # matplotlib loads only when a figure is asked for

        return plot_lr_find(self)


# --------------------------------------------------------------------------- recommendation
EDGE_DIV = 5.0  # lr_max sits this factor (0.7 decade) below the lr where the loss starts to climb


def recommend(result: LRFindResult) -> tuple[float, str]:
    """lr_max for fit_one_cycle: a fifth of the lr where the raw loss bottoms out (median over sweeps).

    The edge is read on the raw loss smoothed without lag (`suggestions.edge`): the finder's moving
    average trails the lr by decades, so its lowest point, and fastai's minimum/10 with it, sit too far
    right or never show. valley and steep are reported but not used: on that lagged curve they mark
    where the loss *began* to fall, too low for 1cycle from scratch.

    Calibrated on MNIST, simple_cnn, one epoch of fit_one_cycle, seed 42 (test accuracy):
      BN, bs 512 (edge 0.74): valley 0.0023 -> 95.7%; 0.006 -> 97.4%; 0.02 to 0.4 -> 98.2-98.7%.
      no BN, bs 512 (edge 0.079, diverged there): 0.008 (edge/10) -> 96.3%; 0.016 -> 97.5%; 0.03 and
      0.06 -> 97.7%.
    edge/5 lands inside the good range of both; edge/10 (fastai's factor) is too cautious without BN.
    1cycle tolerates a peak that close to the edge because it warms up from lr_max/25 and anneals.
    """
    s = result.suggestions
    edges = result.values("edge")
    edge_med = s["edge"]["median"]
    lr = edge_med / EDGE_DIV
    n = len(result.sweeps)
    over = f"median of {n} sweeps, range {edges.min():.3g} to {edges.max():.3g}" if n > 1 else "one sweep"
    text = (
        f"Recommended lr_max {lr:.3g} for fit_one_cycle: a fifth of the lr where the loss stops falling and "
        f"starts to climb ({edge_med:.3g}, {over}; read on the raw loss smoothed without lag, because the "
        f"finder's moving average trails the lr by decades). That keeps the peak of the cycle out of the "
        f"unstable region, and 1cycle's warm-up from lr_max/25 and its annealing make a peak that close to "
        f"the edge safe. valley ({s['valley']['median']:.3g}) and steep ({s['steep']['median']:.3g}) are "
        f"more cautious: they sit where the lagged loss falls fastest, which for a network trained from "
        f"scratch is where training starts to work, not where it works best; consider them for fine-tuning."
    )
    last = [sw.edge.index >= len(sw.lrs) - 2 for sw in result.sweeps]
    first = [sw.edge.index <= 1 for sw in result.sweeps]
    if any(last):
        text += (f" Caution: the loss was still falling at the end of {sum(last)} sweep(s), so the edge may "
                 f"lie beyond end_lr={result.settings['end_lr']:g}; raise end_lr to find it.")
    if any(first):
        text += (f" Caution: the loss rose from the first step in {sum(first)} sweep(s); lower "
                 f"start_lr={result.settings['start_lr']:g}.")
    return lr, text


# --------------------------------------------------------------------------- the sweep
def _set_order(learn: Learner, seed: int) -> None:
    """Give this repeat its own batch order."""
    data = learn.train_data
    gen = data.generator if isinstance(data, DeviceBatches) else _loader_generator(data)
    if gen is not None:
        gen.manual_seed(seed)
    torch.manual_seed(seed)  # a DataLoader without a generator draws its order from torch's RNG


def lr_find(learn: Learner, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
            stop_div: bool = True, repeats: int = 1, beta: float = 0.98, seed: int = 0) -> LRFindResult:
    """Sweep the lr from `start_lr` to `end_lr` over `num_it` steps, `repeats` times, and put the learner
    back exactly as it was.

    The first sweep uses the data's own next batch order (what the next fit would see); sweep r >= 1
    reseeds the order with `seed + r`. The learner's callbacks (run savers, statistics, progress bars,
    its Recorder) see nothing of the sweep; afterwards the last LRFinder is reachable as `learn.lr_finder`.
    """
    refuse_under_torchrun("lr_find")
    check_sweep_args(start_lr, end_lr, num_it, repeats, beta)
    n_iter = len(learn.train_data)
    if n_iter == 0:
        raise ConfigError("the training data yields no batch: is the batch size larger than the data?")
    snap = _Snapshot.take(learn)
    sweeps, finder = [], None
    try:
        for r in range(repeats):
            snap.restore(learn)
            order_seed = None if r == 0 else seed + r
            if order_seed is not None:
                _set_order(learn, order_seed)
            finder = LRFinder(start_lr, end_lr, num_it, stop_div, beta)
            learn.bare_copy().fit(-(-num_it // n_iter), cbs=[finder])  # enough epochs for num_it steps
            lrs, losses, raw = np.array(finder.lrs), np.array(finder.losses), np.array(finder.raw_losses)
            sweeps.append(Sweep(lrs, losses, raw, suggest(lrs, losses, num_it), edge(lrs, raw),
                                finder.stop_reason, order_seed))
    finally:
        snap.restore(learn)
        if finder is not None:  # reachable by name like any callback of the learner, but not attached
            learn.add_cb(finder)
            learn.remove_cb(finder)
    settings = {"start_lr": start_lr, "end_lr": end_lr, "num_it": num_it, "stop_div": stop_div,
                "repeats": repeats, "beta": beta, "seed": seed, "suggestions": list(SUGGESTIONS)}
    return LRFindResult(sweeps, settings)
