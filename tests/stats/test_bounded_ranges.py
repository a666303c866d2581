"""Histogram ranges of activations with bounded outputs (sigmoid, tanh, softmax, hard variants): under
hist_range="auto" each gets its bounds, its values equal to the upper bound are counted in the last bin (as
torch.histc counts them), and every path (per layer, the CPU's row batch, the GPU's row batch run here on
the CPU) gives torch.histc's counts on real MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convscope.stats.collector import StatsCollector
from convscope.stats.compute import bin_layout
from convscope.stats.row_batch import DeviceRowBatch, RowBatch

from .test_activation_stats import fastai_stats, record_one_batch

BOUNDS = {"sig": (0.0, 1.0), "tanh": (-1.0, 1.0), "hardtanh": (-1.0, 1.0), "hardsig": (0.0, 1.0),
          "softmax": (0.0, 1.0), "relu6": (0.0, 10.0), "conv": (-5.0, 5.0), "conv2": (-5.0, 5.0),
          "fc": (-5.0, 5.0), "relu": (0.0, 10.0)}


class Bounded(nn.Module):
    """Every bounded activation the default ranges know, driven into saturation (the scale factors), so that
    many values sit exactly at their upper bound: a sigmoid's 1.0 in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 5, stride=2, padding=2)
        self.sig = nn.Sigmoid()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.tanh = nn.Tanh()
        self.relu = nn.ReLU()
        self.hardtanh = nn.Hardtanh()
        self.hardsig = nn.Hardsigmoid()
        self.relu6 = nn.ReLU6()
        self.fc = nn.Linear(8 * 7 * 7, 10)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        h = self.sig(self.conv(x) * 10)
        h = self.tanh(self.conv2(h) * 20)
        h = self.hardtanh(self.relu(h) * 3)
        h = self.relu6(self.hardsig(h * 4) * 8)
        return self.softmax(self.fc(h.flatten(1)) * 20)


@pytest.mark.parametrize("rows", ["auto", "per_layer", "device"])
def test_bounded_activations_get_their_bounds_and_histc_counts(mnist_tensors, rows):
    x = mnist_tensors[0][:64]
    torch.manual_seed(0)
    model = Bounded().train()
    collector = record_one_batch(model, x, rows=rows)
    if rows == "auto":
        assert isinstance(collector._batch, RowBatch)  # the bounded ranges still go into one row batch
    data = collector.data()
    assert {name: (float(lo), float(hi)) for name, (lo, hi) in zip(data.layers, data.hist_range)} == BOUNDS
    outputs = {}
    handles = [m.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach().clone()))
               for name, m in model.named_children()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    at_top = 0
    for i, name in enumerate(data.layers):
        out, (lo, hi) = outputs[name], data.hist_range[i]
        expected = fastai_stats(out, 40, lo, hi)  # torch.histc
        at_top += int((out == hi).sum())
        # torch.histc counts values equal to hi in the last bin; a value within float32 rounding of an inner
        # edge may land on either side of it (compute.py), which these batches do not hit
        np.testing.assert_array_equal(data.hist[0, i], expected["hist"], err_msg=name)
        n = out.numel()  # the shares as exact counts (fastai_stats' float32 means round them)
        assert data.near_zero[0, i] * n == pytest.approx(int((out <= 0.05).sum()), abs=1e-6), name
        assert data.negative[0, i] * n == pytest.approx(int((out < 0).sum()), abs=1e-6), name
        assert data.abs_near_zero[0, i] * n == pytest.approx(int((out.abs() <= 0.05).sum()), abs=1e-6), name
    assert at_top > 10_000  # the saturated layers' values at their upper bound were there to be counted


def test_bins_of_bounded_ranges_split_like_the_default_ones():
    assert bin_layout(40, 0.0, 10.0).fine == 5  # 0.05 each: fastai's range, as before
    assert bin_layout(40, 0.0, 1.0).fine == 1  # 0.025-wide bins already have an edge at 0.05 ...
    unit = bin_layout(40, 0.0, 1.0, fine=5)  # ... and split into 200 of 0.005 like the default ranges
    # each edge as the number of fine bins below it (the cumulative count there, underflow included)
    assert (unit.fine, unit.near, unit.zero, unit.negative_near) == (5, 10, 0, None)
    signed = bin_layout(40, -1.0, 1.0, fine=5)
    assert (signed.near, signed.zero, signed.negative_near) == (105, 100, 95)
    assert bin_layout(40, 0.0, 6.0, fine=5).fine == 0  # ReLU6's [0, 6]: 0.03-wide sub-bins miss 0.05


def test_bounds_that_do_not_split_like_the_default_ranges_keep_a_default_range():
    # With 40 bins, [-2, 2] and [0, 6] would need sub-bins of 0.02 and 0.03 to match the default ranges' 200,
    # which have no edge at 0.05; [0, 2] splits into 0.01s.
    model = nn.Sequential(nn.Hardtanh(-2.0, 2.0), nn.ReLU6(), nn.Hardtanh(0.0, 2.0))
    assert StatsCollector(model).ranges == [(-5.0, 5.0), (0.0, 10.0), (0.0, 2.0)]


def test_an_explicit_range_at_the_bound_counts_values_at_the_bound(mnist_tensors):
    x = mnist_tensors[0][:64]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.Sigmoid()).train()
    with torch.no_grad():
        model[0].weight.mul_(30)
        out = model(x)
    data = record_one_batch(model, x, hist_range=(0.0, 1.0), modules=[nn.Sigmoid]).data()
    assert int((out == 1.0).sum()) > 1000
    np.testing.assert_array_equal(data.hist[0, 0], torch.histc(out, 40, 0.0, 1.0).numpy())
    assert data.hist[0, 0].sum() == out.numel()  # every value is in [0, 1]


def test_a_resumed_run_keeps_the_ranges_it_was_saved_with(mnist_tensors):
    # A run saved when a sigmoid's "auto" range was [0, 10]: its resumed rows stay on that range, so that
    # all rows of one layer share one range.
    x = mnist_tensors[0][:128]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.Sigmoid()).train()
    saved = record_one_batch(model, x[:64], hist_range=(0.0, 10.0), every=1).data()
    saved.hist_range = np.array([[-5.0, 5.0], [0.0, 10.0]])
    collector = StatsCollector(model, every=1)
    assert collector.ranges[1] == (0.0, 1.0)
    collector.restore(saved, before_step=1)
    collector.attach()
    collector.begin_step(1)
    model(x[64:])
    collector.end_step()
    collector.detach()
    data = collector.data()
    assert tuple(data.hist_range[1]) == (0.0, 10.0) and list(data.steps) == [0, 1]
    with torch.no_grad():
        out = model(x[64:])
    np.testing.assert_array_equal(data.hist[1, 1], torch.histc(out, 40, 0.0, 10.0).numpy())
    assert isinstance(collector._batch, RowBatch) and not isinstance(collector._batch, DeviceRowBatch)
