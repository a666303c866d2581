"""Per-layer activation statistics of one batch, computed on the activation's own device.

Definitions (fastai's ActivationStats, so numbers compare), for an output `o` seen as float32:
    mean       o.mean()
    std        o.std()                       (unbiased)
    near_zero  (o <= 0.05).float().mean()
    negative   (o < 0).float().mean()             (not fastai's: the share a ReLU after this layer zeroes)
    abs_near_zero  (o.abs() <= 0.05).float().mean()   (not fastai's: values actually near zero)
    hist       torch.histc(o, bins, lo, hi)  (values outside [lo, hi] are not counted)
    dead       share of channels (dim 1) whose value is <= 0 for every element of the batch

How it is made fast (the CPU is the hard case; the timings are in docs/measurements.md#stats-compute):
- torch.histc runs single-threaded on the CPU; quantising to uint8 bin indices (element-wise) then
  torch.bincount gives identical counts in a fraction of its time. On CUDA, bincount would sync with the
  host to size its output, so histc is used there.
- std comes from the sum and the sum of squares (a sum and a dot product) instead of the slower o.std():
  var = (sumsq - n mean^2) / (n - 1), evaluated in float64 on the host when the block is read. Sums also
  combine over processes by plain addition (reduce.py).
- The bin indices are finer than the bins (5x for 40 bins over [0, 10] or [-5, 5]), so that fine-bin
  edges fall at -0.05, 0 and 0.05 (`BinLayout`): near_zero, negative and abs_near_zero then fall out of
  the same counts (a cumulative sum read at those edges), with no extra pass over the values. A value
  within float32 rounding of an edge (|x - edge| below about 4e-7 for the default ranges; exactly 0.05
  included) may land on either side of it, and which side can differ between CPUs and torch builds
  (fused multiply-add or not); every other value is counted as the definitions above count it. A
  range without those edges counts near_zero and negative with one pass each; abs_near_zero then needs
  the edge at -0.05, unless the layer has no negative value (see `finish`).
- The counts' last position holds the values above hi and those equal to it, which histc counts in its last
  bin. For a layer whose range ends at the most it can output (a sigmoid's [0, 1], where a saturated unit
  gives exactly 1.0) all of them are equal to hi and go to the last bin (`BinLayout.closed`); elsewhere a
  value exactly equal to hi goes uncounted with those above it.
- Per-channel maxima (dead channels): torch's CPU max-reduction over many rows of a short inner dim
  (channels_last, 8 channels) is much slower than over a long one, so `channel_maxima` folds rows together
  first; see there.
Nothing here reads a value back to the host: results are written into the caller's device buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NEAR_ZERO = 0.05
# Columns of the per-step device buffer (float32): sums and counts only, so that rows of several processes
# add up (reduce.py). The element and channel counts need no device work: the caller keeps them on the
# host (see buffer.py), and `finish` turns sums and counts into statistics.
SUM, SUM_SQ, NEAR_ZERO_COUNT, DEAD_COUNT, NEGATIVE_COUNT, ABS_NEAR_ZERO_COUNT = range(6)
N_VALUES = 6


@dataclass(frozen=True)
class BinLayout:
    """How one layer's values are binned: `fine` sub-bins per histogram bin (0: none, count by passes), and
    the fine-bin edges at NEAR_ZERO, 0 and -NEAR_ZERO as positions in the counts [below lo, fine bins...,
    above hi], where the cumulative count up to position m is the number of values below that edge.
    `closed`: the layer's values never exceed hi (a sigmoid's 1.0), so the overflow count is the values
    equal to hi, which belong in the last bin (torch.histc counts hi; the fine bins leave it out)."""

    fine: int
    near: int | None = None
    zero: int | None = None
    negative_near: int | None = None
    closed: bool = False

    @property
    def edges(self) -> tuple[int, int, int]:
        """The three positions for a gather (0 where an edge is missing: its column is not read)."""
        return (self.near or 0, self.zero or 0, self.negative_near or 0)


MAX_FINE_BINS = 1024  # fine bins of a layer at most: more would make counting cost more than a pass saves


def bin_layout(bins: int, lo: float, hi: float, fine: int | None = None, closed: bool = False) -> BinLayout:
    """The split of `bins` bins over [lo, hi] into the fewest equal sub-bins (or exactly `fine`) that have
    an edge at 0.05: sub-bins of 0.05 / j for a whole j (0.05 for [0, 10] and 40 bins, 0.025 for [0, 1]);
    fine 0 when there is none (within MAX_FINE_BINS)."""
    width = (hi - lo) / bins
    for k in (range(1, MAX_FINE_BINS // bins + 1) if fine is None else [fine]):
        fine_width = width / k
        per_near = NEAR_ZERO / fine_width
        if bins * k <= MAX_FINE_BINS and per_near >= 1 - 1e-9 and abs(per_near - round(per_near)) < 1e-6:
            near = _edge(NEAR_ZERO, lo, hi, fine_width)
            if near is not None:
                return BinLayout(k, near, _edge(0.0, lo, hi, fine_width), _edge(-NEAR_ZERO, lo, hi, fine_width),
                                 closed)
    return BinLayout(0, closed=closed)


def _edge(at: float, lo: float, hi: float, fine_width: float) -> int | None:
    """The position of a fine-bin edge at `at`, if one lies in [lo, hi]."""
    m = (at - lo) / fine_width
    return int(round(m)) if lo <= at <= hi and abs(m - round(m)) < 1e-6 else None


def channels_innermost(x: torch.Tensor) -> bool:
    """Whether x is a channels_last [N, C, H, W] tensor whose channels are innermost in memory (and not
    also contiguous, as it is when H = W = 1)."""
    return x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _in_memory_order(x: torch.Tensor) -> torch.Tensor | None:
    """x's elements as a 1-d view in memory order, when x is dense (contiguous or channels_last), else None.

    The statistics other than dead channels ignore element order, and a 1-d view needs no copy where
    `x.reshape(-1)` of a channels_last tensor would copy it (a sampled output x[:n] stays dense: the batch
    dim is outermost in memory in both layouts)."""
    if x.is_contiguous():
        return x.view(-1)
    if channels_innermost(x):
        return x.permute(0, 2, 3, 1).reshape(-1)  # a view: this permutation is x's memory order
    return None


def channel_maxima(x: torch.Tensor) -> torch.Tensor:
    """Each channel's (dim 1) largest value over all other dims: [C] (a 0-d or 1-d x counts as one channel).

    Reducing [rows, C] over its rows with a short C (8 or 16 channels innermost in memory) is much slower
    in torch's CPU kernel than with a long inner dim (docs/measurements.md#stats-compute), so `k`
    consecutive rows are read as one row of k*C values first (a view), and the k maxima per channel are
    reduced in a second, tiny step.
    """
    if x.ndim < 2:
        return x.amax().view(1)
    c = x.shape[1]
    if channels_innermost(x):
        return _fold_rows_amax(x.permute(0, 2, 3, 1).reshape(-1, c))  # a view: channels innermost
    if x.ndim == 2 and x.is_contiguous():
        return _fold_rows_amax(x)
    if x.is_contiguous():  # [N, C, spatial...]: batch dim first, then each channel's grid
        return x.reshape(x.shape[0], -1).amax(dim=0).view(c, -1).amax(dim=1)
    return x.transpose(0, 1).reshape(c, -1).amax(dim=1)  # any other layout: one copy


def _fold_rows_amax(rows: torch.Tensor) -> torch.Tensor:
    m, c = rows.shape
    k = 1
    while k * c < 128 and m % (2 * k) == 0:
        k *= 2
    return rows.reshape(m // k, k * c).amax(dim=0).view(k, c).amax(dim=0)


def bin_positions(x: torch.Tensor, n: int, lo: float, hi: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Each value's bin among `n` equal bins over [lo, hi], as a float whose integer part is the bin: 0
    below lo, 1..n the bins, n+1 above hi. Two passes: `shift + scale * x` (one op: torch.add's alpha
    scales its second argument) and a clamp, so that nothing wraps when cast. The one place this arithmetic
    lives, so that every path (per layer, batched rows, the GPU's row) puts a value in the same bin."""
    scale = n / (hi - lo)
    return torch.add(_shift(1.0 - lo * scale, x.dtype), x, alpha=scale, out=out).clamp_(0, n + 1)


_SHIFTS: dict[tuple[float, torch.dtype], torch.Tensor] = {}


def _shift(value: float, dtype: torch.dtype) -> torch.Tensor:
    """A 0-d CPU tensor of `value` (allowed beside a tensor on any device), made once: torch.tensor() is
    four small ops, per layer and row."""
    key = (value, dtype)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.tensor(value, dtype=dtype)
    return _SHIFTS[key]


def _bin_indices(x: torch.Tensor, n: int, lo: float, hi: float) -> torch.Tensor:
    """`bin_positions` as integers: bytes where the n + 2 bins fit (bincount counts bytes about twice as
    fast as int16), else int32. The cast to bytes goes through int16: torch's CPU cast from float32 to
    uint8 takes ~4x as long as float32 -> int16 -> uint8 (0.32 vs 0.08 ns a value on an AMD EPYC Zen 4;
    docs/measurements.md#stats-compute). (The cast truncates, which is the floor here: positions are >= 0.)"""
    positions = bin_positions(x, n, lo, hi)
    if n + 1 < 256:
        return positions.to(torch.int16).to(torch.uint8)
    return positions.to(torch.int32)


def histogram(x: torch.Tensor, bins: int, lo: float, hi: float, fine: int = 1) -> torch.Tensor:
    """Counts of `x` in `bins * fine` equal bins over [lo, hi], plus one underflow and one overflow bin.

    Returns an int64 tensor of length bins*fine + 2: [below lo, bin 0, ..., bin n-1, above hi].
    """
    n = bins * fine
    if x.device.type == "cuda":  # no host sync: histc sizes its output from its arguments
        inner = torch.histc(x, n, lo, hi).long()
        return torch.cat([(x < lo).sum().view(1), inner, (x > hi).sum().view(1)])
    return torch.bincount(_bin_indices(x, n, lo, hi).reshape(-1), minlength=n + 2)


def float_values(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x detached as float32, and its values as a 1-d tensor in memory order: a view where x is dense
    (contiguous or channels_last), else a copy in logical order."""
    x = x.detach()
    if x.dtype != torch.float32:
        x = x.float()
    flat = _in_memory_order(x)
    return x, (x.reshape(-1) if flat is None else flat)


def write_sums(x: torch.Tensor, values: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Write x's sum and sum of squares into `values`; return `float_values(x)`."""
    x, flat = float_values(x)
    torch.sum(flat, dim=0, out=values[SUM])
    torch.dot(flat, flat, out=values[SUM_SQ])
    return x, flat


def layer_stats(x: torch.Tensor, values: tuple[torch.Tensor, ...], hist: torch.Tensor | None,
                bins: int, lo: float, hi: float, layout: BinLayout,
                channel_max: torch.Tensor | None = None) -> tuple[int, int]:
    """Write the statistics of activation `x` into `values` (one 0-d view per column, indexed by SUM,
    SUM_SQ, ...: views made once, since indexing costs as much as a small op) and `hist` (int64, `bins`).

    `layout` is `bin_layout(bins, lo, hi)` (made once per layer by the caller). Returns the number of
    elements and of channels, which the caller keeps on the host. `channel_max`, if given, receives each
    channel's largest value: what processes combine to count dead channels (reduce.py).
    """
    x, flat = write_sums(x, values)
    counts = None
    if hist is not None:
        counts = histogram(flat, bins, lo, hi, max(layout.fine, 1))
        torch.sum(counts[1:-1].view(bins, -1), dim=1, out=hist)
        if layout.closed:
            hist[-1] += counts[-1]
    below = counts.cumsum(0) if counts is not None and layout.fine else None  # values below each fine edge
    if below is not None:
        values[NEAR_ZERO_COUNT].copy_(below[layout.near])
    else:
        values[NEAR_ZERO_COUNT].copy_(flat.le(NEAR_ZERO).sum())
    if below is not None and layout.zero is not None:
        values[NEGATIVE_COUNT].copy_(below[layout.zero])
    else:
        values[NEGATIVE_COUNT].copy_(flat.lt(0).sum())
    if below is not None and layout.negative_near is not None:
        values[ABS_NEAR_ZERO_COUNT].copy_(below[layout.near] - below[layout.negative_near])
    else:  # no edge at -0.05 to count from: known only where nothing is negative (see finish)
        values[ABS_NEAR_ZERO_COUNT].fill_(float("nan"))
    per_channel = channel_maxima(x)
    values[DEAD_COUNT].copy_(per_channel.le(0).sum())
    if channel_max is not None:
        channel_max.copy_(per_channel)
    return x.numel(), per_channel.numel()


def finish(values, sizes):
    """Host-side: buffer columns and (elements, channels) per entry -> (mean, std, near_zero, dead, negative,
    abs_near_zero).

    abs_near_zero is NaN in the buffer where the layer's bins have no edge at -0.05 (e.g. the range
    [0, 10] of a layer after a ReLU): where such a layer has no negative value, |x| <= 0.05 is x <= 0.05,
    so it is near_zero; where it has some, it stays NaN (unknown with that range)."""
    v = np.asarray(values, dtype=np.float64)
    n = np.asarray(sizes[..., 0], dtype=np.float64)
    channels = np.asarray(sizes[..., 1], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = v[..., SUM] / n
        var = (v[..., SUM_SQ] - n * mean**2) / (n - 1)
        std = np.sqrt(np.clip(var, 0, None))
        near = v[..., NEAR_ZERO_COUNT] / n
        dead = v[..., DEAD_COUNT] / channels
        negative = v[..., NEGATIVE_COUNT] / n
        abs_near = v[..., ABS_NEAR_ZERO_COUNT] / n
    abs_near = np.where(np.isnan(abs_near) & (v[..., NEGATIVE_COUNT] == 0), near, abs_near)
    return mean, std, near, dead, negative, abs_near
