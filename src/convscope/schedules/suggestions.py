"""Learning-rate suggestions from an LR-finder sweep: pure functions of (lrs, smoothed losses).

These are fastai's four definitions (fastai/callback/schedule.py: `minimum`, `steep`, `valley`, `slide`),
with two changes so that they are safe on any sweep:

- non-finite losses (a NaN or inf from a diverged step) are dropped before anything is computed, and the
  returned index still points into the arrays as given;
- fewer than `MIN_POINTS` finite points is a `ConfigError` that says what to change, never a NaN.

Each function returns a `Suggestion`: the suggested lr, the index of the point it was read from, and the
loss there (for plotting). `suggest` trims a whole sweep the way fastai's `lr_find` does and runs all four.

`edge` is not fastai's: the lr where the *raw* loss, smoothed without lag, bottoms out. fastai's moving
average (beta 0.98) trails the lr by up to ~50 steps, which on a 100-step sweep over 8 decades is 4
decades, so the smoothed curve cannot say where the loss really starts to climb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from convscope.errors import ConfigError

MIN_POINTS = 5  # below this a slope, a valley or a slide window means nothing


@dataclass(frozen=True)
class Suggestion:
    """A suggested learning rate, read at `index` of the sweep (whose loss is `loss`)."""

    lr: float
    index: int
    loss: float


def _finite_points(lrs: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, lrs, losses) of the points whose lr and loss are finite and whose lr is > 0.

    Raises ConfigError when fewer than MIN_POINTS remain.
    """
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if lrs.shape != losses.shape or lrs.ndim != 1:
        raise ConfigError(f"lrs and losses must be 1-d arrays of one length, got {lrs.shape} and {losses.shape}")
    keep = np.isfinite(lrs) & np.isfinite(losses) & (lrs > 0)
    pos = np.flatnonzero(keep)
    if len(pos) < MIN_POINTS:
        raise ConfigError(
            f"the LR sweep has only {len(pos)} usable points (finite loss, lr > 0) of {len(lrs)}; "
            f"need at least {MIN_POINTS}: raise num_it, or lower end_lr if the loss diverged early"
        )
    return pos, lrs[pos], losses[pos]


def minimum(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """One tenth of the lr at the lowest loss (the lowest point is already too close to divergence)."""
    pos, lr, loss = _finite_points(lrs, losses)
    i = int(np.argmin(loss))
    return Suggestion(float(lr[i]) / 10, int(pos[i]), float(loss[i]))


def steep(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """The lr where the loss falls fastest against log(lr): the left end of the steepest segment."""
    pos, lr, loss = _finite_points(lrs, losses)
    # Slope per unit of log(lr), not per step: dropped points leave gaps that must not look steeper.
    slopes = np.diff(loss) / np.diff(np.log(lr))
    i = int(np.argmin(slopes))
    return Suggestion(float(lr[i]), int(pos[i]), float(loss[i]))


def valley(lrs: np.ndarray, losses: np.ndarray) -> Suggestion:
    """fastai's valley: the longest run of falling losses, and the point half-way down it.

    "Run" is fastai's: the longest strictly decreasing subsequence (not necessarily contiguous, so an
    isolated spike does not break it), ending at `end` with length L; it is taken to start at `end - L`
    and the point `int(S) + int(S / 2)` into it is returned, with S = (end - start) / 3. This is fastai's
    loop, kept quirk for quirk so that its numbers compare (see tests); the one change is that an index
    that would fall before the first point is clipped to it (fastai's negative index wrapped round to
    the *largest* lr).
    """
    pos, lr, loss = _finite_points(lrs, losses)
    n = len(loss)
    lds = np.ones(n, dtype=np.int64)  # length of the longest decreasing subsequence ending at i
    max_start, max_end = 0, 0
    for i in range(1, n):
        higher = np.flatnonzero(loss[:i] > loss[i])  # earlier points that i can continue downwards
        if len(higher) == 0:
            continue
        candidates = lds[higher] + 1
        lds[i] = candidates.max()
        # fastai updates (max_end, max_start) inside its inner loop, at the *first* j that lifts
        # lds[i] above the record, so max_start uses lds[i]'s value at that moment, not its final one.
        record = lds[max_end]
        above = np.flatnonzero(candidates > record)
        if len(above):
            max_end = i
            max_start = i - int(candidates[above[0]])
    sections = (max_end - max_start) / 3
    i = min(n - 1, max(0, max_start + int(sections) + int(sections / 2)))
    return Suggestion(float(lr[i]), int(pos[i]), float(loss[i]))


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005,
          adjust_value: float = 1.0) -> Suggestion:
    """fastai's interval slide rule: walk left from the high-lr end with a window of `lr_diff` points
    until the loss gradients at the window's two ends differ by at most `thresh`; suggest the lr where
    the walk stopped (times `adjust_value`).

    Gradients are per point (np.gradient over the index), as in fastai, so `thresh` is in loss units per
    step. A sweep shorter than the window uses the widest window that fits (fastai raised IndexError).
    """
    pos, lr, loss = _finite_points(lrs, losses)
    n = len(loss)
    lr_diff = min(lr_diff, n - 1)
    grad = np.gradient(loss)
    r, left = n - 1, n - 1 - lr_diff
    found = left
    while left >= 0 and abs(grad[r] - grad[left]) > thresh:
        found = left
        r, left = r - 1, left - 1
    return Suggestion(float(lr[found]) * adjust_value, int(pos[found]), float(loss[found]))


def centered_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over `window` points centred on each point (fewer at the ends): smooths without lag."""
    values = np.asarray(values, dtype=np.float64)
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo, hi = np.maximum(0, idx - half), np.minimum(len(values), idx + half + 1)
    return (sums[hi] - sums[lo]) / (hi - lo)


def edge(lrs: np.ndarray, raw_losses: np.ndarray, decades: float = 0.5) -> Suggestion:
    """The lr where the loss stops falling: lowest point of the raw losses after a centred running mean
    over `decades` of lr (at least 3 points). Beyond it the loss climbs; the suggestion is that lr itself.
    """
    pos, lr, loss = _finite_points(lrs, raw_losses)
    span = np.log10(lr[-1] / lr[0])
    per_decade = (len(lr) - 1) / span if span > 0 else len(lr)
    window = max(3, int(round(decades * per_decade)) | 1)  # odd, so the window is centred
    smooth = centered_mean(loss, window)
    i = int(np.argmin(smooth))
    return Suggestion(float(lr[i]), int(pos[i]), float(smooth[i]))


SUGGESTIONS: dict[str, Callable[[np.ndarray, np.ndarray], Suggestion]] = {
    "minimum": minimum,
    "steep": steep,
    "valley": valley,
    "slide": slide,
}


def trim_bounds(n: int, num_it: int, skip_end: int = 5) -> tuple[int, int]:
    """fastai's window on a sweep: drop the first num_it // 10 points (the loss has not reacted to the
    lr yet, and the smoothing is still warming up) and the last `skip_end` (where it diverged).

    Short sweeps keep more, so that at least MIN_POINTS remain when there are that many.
    """
    start, end = num_it // 10, n - skip_end
    if end - start < MIN_POINTS:
        end = n
    if end - start < MIN_POINTS:
        start = 0
    return start, max(start, end)


def suggest(lrs: np.ndarray, losses: np.ndarray, num_it: int | None = None,
            names: tuple[str, ...] = tuple(SUGGESTIONS)) -> dict[str, Suggestion]:
    """All suggestions `names` for one sweep, on fastai's trimmed window; indices point into `lrs`."""
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    unknown = [n for n in names if n not in SUGGESTIONS]
    if unknown:
        raise ConfigError(f"unknown suggestion {unknown[0]!r}; choose from {', '.join(SUGGESTIONS)}")
    start, end = trim_bounds(len(lrs), len(lrs) if num_it is None else num_it)
    out = {}
    for name in names:
        s = SUGGESTIONS[name](lrs[start:end], losses[start:end])
        out[name] = Suggestion(s.lr, s.index + start, s.loss)
    return out
