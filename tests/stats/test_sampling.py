"""The sampling error of ActivationStats' defaults, measured against exact statistics on real MNIST.

The defaults record every AUTO_START-th step at first (those rows are exact in time; this run is shorter than
the interval's calibration window, stats/interval.py) and compute each row on
the first DEFAULT_SAMPLE items of the (shuffled) batch. Measured here on a real run, per layer and
recorded step, against the same steps computed on the whole batch. The bounds below are the documented
sampling error of the defaults (README, "Cost and sampling").
"""

from __future__ import annotations

import numpy as np
import torch

from convscope.data.batches import DeviceBatches
from convscope.models.cnn import simple_cnn
from convscope.stats import ActivationStats
from convscope.stats.activations import DEFAULT_SAMPLE
from convscope.stats.interval import AUTO_START
from convscope.train import Learner

MEAN_STD_REL = 0.10  # mean and std within 10% (relative to the layer's std) of the whole-batch value
NEAR_ZERO_ABS = 0.05  # near-zero share within 5 percentage points (the 10-channel last layers vary most)
HIST_TV = 0.05  # total-variation distance between normalised histograms, layers with >= 10,000 sampled values
HIST_TV_SMALL = 0.25  # ... and for small layers (the 10-value logits layer: 640 values in a 64-item sample)


def run(mnist_tensors, cb):
    x, y, _, _ = mnist_tensors
    torch.manual_seed(0)
    learn = Learner(simple_cnn(), DeviceBatches(x[:8192], y[:8192], 512, shuffle=True, drop_last=True), cbs=[cb])
    learn.fit_one_cycle(1, 0.06)
    return learn.activation_stats.data


def test_default_sampling_error_is_within_documented_bounds(mnist_tensors):
    exact = run(mnist_tensors, ActivationStats(every=1, sample=None))
    sampled = run(mnist_tensors, ActivationStats())
    assert DEFAULT_SAMPLE < 512 and list(sampled.steps) == list(range(0, 16, AUTO_START))
    rows = np.searchsorted(exact.steps, sampled.steps)
    scale = exact.std[rows]
    assert np.max(np.abs(sampled.mean - exact.mean[rows]) / scale) <= MEAN_STD_REL
    assert np.max(np.abs(sampled.std - exact.std[rows]) / scale) <= MEAN_STD_REL
    assert np.max(np.abs(sampled.near_zero - exact.near_zero[rows])) <= NEAR_ZERO_ABS
    p = sampled.hist / np.maximum(sampled.hist.sum(-1, keepdims=True), 1)
    q = exact.hist[rows] / np.maximum(exact.hist[rows].sum(-1, keepdims=True), 1)
    tv = 0.5 * np.abs(p - q).sum(-1)
    counted = sampled.hist.sum(-1)  # sampled values that fell inside the histogram's range
    big = counted >= 10_000
    assert big.any() and np.max(tv[big]) <= HIST_TV
    assert np.max(tv) <= HIST_TV_SMALL
    # Gradient statistics are never sampled: identical at the shared steps.
    np.testing.assert_array_equal(sampled.grad_norm, exact.grad_norm[rows])
