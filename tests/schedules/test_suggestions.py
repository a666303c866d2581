"""LR suggestions on hand-made loss curves (spikes, NaNs, flat parts), where the right index is worked
out by hand, and against a line-by-line transcription of fastai's loops on random curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convscope.errors import ConfigError
from convscope.schedules.suggestions import (
    MIN_POINTS,
    centered_mean,
    edge,
    minimum,
    slide,
    steep,
    suggest,
    trim_bounds,
    valley,
)

NAN, INF = float("nan"), float("inf")


def log_lrs(n: int, start: float = 1e-7, end: float = 10.0) -> np.ndarray:
    return start * (end / start) ** (np.arange(n) / (n - 1))


# --------------------------------------------------------------------------- references (fastai's loops)
def fastai_valley_index(losses: list[float]) -> int:
    """fastai/callback/schedule.py `valley`, transcribed loop for loop (returns the index, not the lr)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def fastai_slide_index(losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> int:
    """fastai's `slide`, transcribed with its negative indices; returns the positive index."""
    loss_grad = np.gradient(losses)
    r_idx = -1
    l_idx = r_idx - lr_diff
    local_min = l_idx
    while (l_idx >= -len(losses)) and (abs(loss_grad[r_idx] - loss_grad[l_idx]) > thresh):
        local_min = l_idx
        r_idx -= 1
        l_idx -= 1
    return len(losses) + local_min


# --------------------------------------------------------------------------- minimum
def test_minimum_ignores_nan_and_minus_inf_and_divides_by_ten():
    losses = [3.0, 3.0, 2.9, -INF, 2.0, 1.5, 1.0, 0.8, NAN, 0.7, 0.9, 2.0, INF]
    lrs = log_lrs(len(losses))
    s = minimum(lrs, losses)
    assert s.index == 9  # 0.7; -inf at 3 and NaN at 8 are dropped, not picked
    assert s.lr == pytest.approx(lrs[9] / 10, rel=1e-12)
    assert s.loss == 0.7


def test_minimum_on_a_flat_curve_takes_the_first_point():
    s = minimum(log_lrs(8), [1.0] * 8)
    assert s.index == 0


# --------------------------------------------------------------------------- steep
def test_steep_is_the_left_end_of_the_steepest_segment():
    losses = [2.0, 2.0, 1.9, 1.5, 0.5, 0.4, 0.35, 0.3]
    assert steep(log_lrs(len(losses)), losses).index == 3  # 1.5 -> 0.5 is the largest drop


def test_steep_measures_slope_across_a_dropped_nan_per_log_lr():
    # Across the NaN at 3 the loss falls 1.0 over two lr steps (0.5 per step); at 6 -> 7 it falls 0.7 in
    # one. Per unit of log(lr) the second is steeper; a slope per remaining point would pick index 2.
    losses = [2.0, 1.9, 1.6, NAN, 0.6, 0.55, 0.5, -0.2, -0.25]
    s = steep(log_lrs(len(losses)), losses)
    assert s.index == 6
    assert math.isfinite(s.lr)


def test_steep_falls_for_an_upward_spike():
    # fastai's definition: the fall back from a spike is the steepest segment. A known weakness of
    # `steep`, and one reason the recommendation does not use it.
    losses = [2.0, 1.9, 1.7, 1.5, 4.0, 1.3, 1.1, 1.0]
    assert steep(log_lrs(len(losses)), losses).index == 4


# --------------------------------------------------------------------------- valley
VALLEY = [5, 5, 5, 4, 3, 2, 1, 0.5, 0.4, 1, 3, 9]


def test_valley_by_hand():
    # Longest strictly falling run: 5 4 3 2 1 0.5 0.4 (indices 2..8, length 7, ends at 8). fastai takes
    # its start as 8 - 7 = 1, S = (8 - 1) / 3 = 2.33, index 1 + int(2.33) + int(1.17) = 4.
    s = valley(log_lrs(len(VALLEY)), VALLEY)
    assert s.index == 4
    assert s.loss == 3
    assert fastai_valley_index(VALLEY) == 4


def test_valley_with_a_nan_is_the_valley_without_it():
    losses = VALLEY[:5] + [NAN] + VALLEY[5:]  # NaN at 5: remaining points are VALLEY again
    s = valley(log_lrs(len(losses)), losses)
    assert s.index == 4


def test_valley_steps_over_a_spike_and_fastai_lands_on_it():
    # The spike (9 at index 5) does not break the falling subsequence 5 4 3 2 1 0.5 0.4 (2..9), but
    # fastai's start, end - length = 9 - 7 = 2, counts it: S = 7/3, index 2 + 2 + 1 = 5, the spike's lr.
    losses = [5, 5, 5, 4, 3, 9, 2, 1, 0.5, 0.4, 1, 3, 9]
    assert valley(log_lrs(len(losses)), losses).index == 5 == fastai_valley_index(losses)


def test_valley_never_wraps_to_the_largest_lr():
    # fastai: max_end 1, max_start -1, index -1 + 0 + 0 = -1, i.e. the *last* (largest) lr. Clipped to 0.
    losses = [2.0, 1.0, 1.5, 1.8, 1.9, 1.95]
    assert fastai_valley_index(losses) == -1
    assert valley(log_lrs(len(losses)), losses).index == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=MIN_POINTS, max_size=60))
def test_valley_matches_fastai_loop(losses):
    expected = fastai_valley_index(losses)
    assert valley(log_lrs(len(losses)), losses).index == min(len(losses) - 1, max(0, expected))


# --------------------------------------------------------------------------- slide
def slide_curve() -> np.ndarray:
    """Flat at 2 (0..9), falling 0.05 per step (10..39), rising 0.2 per step (40..49)."""
    i = np.arange(50)
    loss = np.where(i < 10, 2.0, 2.0 - 0.05 * (i - 9))
    return np.where(i < 40, loss, loss[39] + 0.2 * (i - 39))


def test_slide_by_hand():
    # np.gradient: -0.05 inside the fall (10..38), 0.075 at 39, 0.2 from 40 on. The window (l, r = l + 15)
    # slides left from (34, 49) while the two ends' gradients differ: up to r = 39 (l = 24); at (23, 38)
    # both ends are inside the fall (difference 0) and it stops, returning the last l that moved: 24.
    losses = slide_curve()
    s = slide(log_lrs(50), losses)
    assert s.index == 24 == fastai_slide_index(losses)


def test_slide_with_a_nan_in_the_climb():
    losses = slide_curve()
    losses[45] = NAN
    assert slide(log_lrs(50), losses).index == 24


def test_slide_on_a_sweep_shorter_than_its_window():
    losses = [2.0, 1.8, 1.2, 0.9, 0.8, 1.5]  # 6 points, window 15 -> 5: the walk starts at 0
    s = slide(log_lrs(6), losses)
    assert s.index == 0 and math.isfinite(s.lr)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=17, max_size=80))
def test_slide_matches_fastai_loop(losses):
    losses = np.array(losses)
    assert slide(log_lrs(len(losses)), losses).index == fastai_slide_index(losses)


# --------------------------------------------------------------------------- edge (lag-free lowest point)
def test_centered_mean_against_a_loop():
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    expected = [np.mean(x[max(0, i - 2) : i + 3]) for i in range(len(x))]
    np.testing.assert_allclose(centered_mean(x, 5), expected, rtol=1e-12)


def test_edge_finds_the_bottom_despite_a_downward_spike_and_a_nan():
    lrs = log_lrs(81)  # 10 points per decade -> a 5-point window
    i = np.arange(81)
    losses = 1.0 + 0.05 * np.abs(i - 50)
    losses[10] = 0.0  # one batch with a tiny loss: averaged away
    losses[60] = NAN  # in the climb (one beside the bottom would make 49 and 50 tie)
    s = edge(lrs, losses)
    assert s.index == 50
    assert s.lr == lrs[50]


# --------------------------------------------------------------------------- safety and trimming
@pytest.mark.parametrize("fn", [minimum, steep, valley, slide, edge])
def test_too_few_finite_points_is_a_config_error(fn):
    losses = [1.0, NAN, 0.5, INF, 0.4, NAN, 0.3, NAN]  # 4 finite points
    with pytest.raises(ConfigError, match="only 4 usable points"):
        fn(log_lrs(len(losses)), losses)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.floats(-5, 5), st.sampled_from([NAN, INF, -INF])), min_size=5, max_size=60))
def test_never_nan(losses):
    losses = np.array(losses)
    if np.isfinite(losses).sum() < MIN_POINTS:
        with pytest.raises(ConfigError):
            minimum(log_lrs(len(losses)), losses)
        return
    for fn in (minimum, steep, valley, slide, edge):
        s = fn(log_lrs(len(losses)), losses)
        assert math.isfinite(s.lr) and s.lr > 0
        assert np.isfinite(losses[s.index])


@pytest.mark.parametrize("n, num_it, expected", [(100, 100, (10, 95)), (60, 100, (10, 55)),
                                                 (12, 12, (1, 7)), (8, 8, (0, 8)), (6, 60, (0, 6))])
def test_trim_bounds(n, num_it, expected):
    assert trim_bounds(n, num_it) == expected


def test_suggest_indices_point_into_the_whole_sweep():
    rng = np.random.default_rng(0)
    losses = np.concatenate([np.full(30, 2.5), np.linspace(2.5, 0.3, 50), np.linspace(0.3, 3.0, 20)])
    losses += rng.normal(0, 0.01, len(losses))
    lrs = log_lrs(100)
    got = suggest(lrs, losses, num_it=100)
    window = slice(10, 95)  # fastai's: skip num_it // 10 at the start and 5 at the end
    for name, fn in (("minimum", minimum), ("steep", steep), ("valley", valley), ("slide", slide)):
        assert got[name].index == fn(lrs[window], losses[window]).index + 10
    with pytest.raises(ConfigError, match="unknown suggestion 'best'"):
        suggest(lrs, losses, names=("best",))
