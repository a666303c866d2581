"""The all-layers-at-once rows (stats/row_batch.py): the same numbers as the per-layer path and as plain
PyTorch, also when a watched module does not run in a step or runs twice. The GPU's DeviceRowBatch is
checked here on the CPU (its ops run on both): same counts, and sums to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convscope.models.cnn import simple_cnn
from convscope.stats.collector import StatsCollector
from convscope.stats.row_batch import DeviceRowBatch, RowBatch

from .test_activation_stats import fastai_stats, record_one_batch, reference_outputs


@pytest.mark.parametrize("sample", [64, None])  # None: conv1's 401k values exceed RowBatch.max_elements, a mixed row
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_batched_row_equals_the_per_layer_row_on_real_mnist(mnist_tensors, channels_last, sample):
    x = mnist_tensors[0][:256]
    torch.manual_seed(0)
    model = simple_cnn(head="linear").train()
    with torch.no_grad():
        model.get_submodule("conv2.conv").bias[:4] = -1e3  # some dead channels, to count
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    batched = record_one_batch(model, x, sample=sample)
    assert isinstance(batched._batch, RowBatch)  # the default settings on the CPU take the batched path
    per_layer = record_one_batch(model, x, rows="per_layer", sample=sample)
    device_rows = record_one_batch(model, x, rows="device", sample=sample)
    a, b, c = batched.data(), per_layer.data(), device_rows.data()
    for name in ("mean", "std", "near_zero", "dead", "hist", "negative", "abs_near_zero"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("near_zero", "dead", "hist", "negative", "abs_near_zero"):  # counts: the same arithmetic and bins
        np.testing.assert_array_equal(getattr(c, name), getattr(b, name), err_msg=name)
    # Sums, against the same outputs' float64 statistics (the device row adds in float64): within 1e-5
    # of each layer's rms; a value counted in the wrong layer's segment would be off by far more.
    outputs = reference_outputs(model, x)  # of the whole batch: BatchNorm normalises over it
    for j, layer in enumerate(c.layers):
        out = outputs[layer][: sample or len(x)].double()
        rms = out.square().mean().sqrt().item()
        assert abs(c.mean[0, j] - out.mean().item()) <= 1e-5 * rms, layer
        assert abs(c.std[0, j] - out.std().item()) <= 1e-5 * rms, layer
    assert a.dead[0, a.layers.index("conv2.act")] == 4 / 16


class OddLayouts(nn.Module):
    """Outputs of 3 dims, and a 4-d one that is neither contiguous nor channels_last (a transposed view)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.seq = nn.ReLU()  # [N, 6, 196]
        self.swap = nn.Identity()  # [N, 6, 14, 14] with H and W swapped in memory

    def forward(self, x):
        h = self.conv(x)
        self.seq(h.flatten(2) - 0.2)
        return self.swap(h.transpose(2, 3))


def test_the_device_row_reads_channels_in_any_layout(mnist_tensors):
    x = mnist_tensors[0][:64]
    torch.manual_seed(0)
    model = OddLayouts()
    with torch.no_grad():
        model.conv.bias[:2] = -1e3  # two dead channels in every output
    kw = dict(sample=None, modules=["conv", "seq", "swap"])
    a = record_one_batch(model, x, rows="device", **kw).data()
    b = record_one_batch(model, x, rows="per_layer", **kw).data()
    for name in ("near_zero", "dead", "hist"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5)
    assert a.dead[0].tolist() == [2 / 6] * 3


def test_each_device_takes_its_row():
    model = simple_cnn()
    assert StatsCollector(model)._row_batch(torch.device("cuda")).__class__ is DeviceRowBatch
    assert StatsCollector(model)._row_batch(torch.device("cpu")).__class__ is RowBatch
    assert StatsCollector(model)._row_batch(torch.device("mps")) is None  # per layer where untried


@pytest.mark.parametrize("sample", [64, None])  # None: conv1's block is counted per layer, the rest batched
@pytest.mark.parametrize("rows", ["auto", "device"])
def test_later_rows_equal_the_per_layer_path_too(mnist_tensors, rows, sample):
    # From its second row on, RowBatch's hooks write their bin indices into the buffer laid out by the
    # first row; three rows of different batches must still give exactly the per-layer path's numbers.
    x = mnist_tensors[0]
    torch.manual_seed(0)
    model = simple_cnn(head="linear").train()

    def three_rows(rows: str):
        collector = record_one_batch(model, x[:256], rows=rows, sample=sample)  # row 0 (and detached)
        collector.attach()
        for step, start in [(1, 256), (2, 512)]:
            collector.begin_step(step)
            model(x[start : start + 256])
            collector.end_step()
        collector.detach()
        return collector.data()

    a, b = three_rows(rows), three_rows("per_layer")
    assert len(a.steps) == 3
    for name in ("near_zero", "dead", "hist") if rows == "device" else ("mean", "std", "near_zero", "dead", "hist"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.array_equal(a.hist[1], a.hist[2])  # the rows did see different batches


def test_other_ranges_keep_the_per_layer_path():
    model = simple_cnn()
    # 40 bins over [0, 7.3]: sub-bins with an edge at 0.05 would be 1/20 of a 0.1825-wide bin's 1/73rd,
    # 2920 fine bins, over compute.MAX_FINE_BINS ([0, 7] has them: 280 of 0.025 each)
    assert StatsCollector(model, hist_range=(0.0, 7.3))._batch is None
    assert StatsCollector(model, hist_range=(0.0, 7.0))._batch is not None
    assert StatsCollector(model, hist_range=(0.5, 10.5))._batch is None  # no edge at 0
    assert StatsCollector(model, hist_range="adaptive")._batch is None  # one range per layer
    assert StatsCollector(model, with_hist=False)._batch is None


class SkipsAndRepeats(nn.Module):
    """conv -> act -> (spare only when use_spare) -> act again: `act` runs twice per forward, `spare` once
    in a while."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.spare = nn.Conv2d(8, 8, 3, padding=1)
        self.use_spare = False

    def forward(self, x):
        h = self.act(self.conv(x))
        if self.use_spare:
            h = self.spare(h)
        return self.act(h - 0.5)


@pytest.mark.parametrize("kind", [RowBatch, DeviceRowBatch])
def test_a_module_that_does_not_run_or_runs_twice(mnist_tensors, kind):
    x = mnist_tensors[0][:128]
    torch.manual_seed(0)
    model = SkipsAndRepeats()
    collector = StatsCollector(model, sample=None, modules=["conv", "act", "spare"])
    assert collector._batch is not None and collector.layers == ["conv", "act", "spare"]
    b = collector._batch
    collector._batch = kind(b.bins, b.ranges, collector.layouts)
    collector.attach()
    for step, use_spare in enumerate([True, False]):
        model.use_spare = use_spare
        collector.begin_step(step)
        model(x)
        collector.end_step()
    collector.detach()
    data = collector.data()
    with torch.no_grad():
        conv = model.conv(x)
        first = torch.relu(conv)
        spare = model.spare(first)
        second = {True: torch.relu(spare - 0.5), False: torch.relu(first - 0.5)}
    for row, use_spare in enumerate([True, False]):
        # `act` ran twice: its row holds its last call, as in the per-layer path.
        for i, out in enumerate([conv, second[use_spare], spare]):
            if i == 2 and not use_spare:
                continue  # `spare` did not run: its row keeps what the buffer held (checked below)
            expected = fastai_stats(out, 40, *data.hist_range[i])
            assert data.negative[row, i] == pytest.approx(expected["negative"], abs=2 / out.numel())
            assert data.abs_near_zero[row, i] == pytest.approx(expected["abs_near_zero"], abs=2 / out.numel())
            assert data.mean[row, i] == pytest.approx(expected["mean"], rel=1e-5, abs=1e-6)
            assert data.std[row, i] == pytest.approx(expected["std"], rel=1e-4)
            assert data.near_zero[row, i] == pytest.approx(expected["near_zero"], abs=2 / out.numel())
            assert data.dead[row, i] == pytest.approx(expected["dead"])
            assert np.abs(data.hist[row, i] - expected["hist"]).max() <= 2
    # The per-layer path on the step where `spare` did not run gives the same row for the other layers.
    model.use_spare = False
    per_layer = record_one_batch(model, x, rows="per_layer", modules=["conv", "act", "spare"]).data()
    for name in ("mean", "std", "near_zero", "dead", "hist", "negative", "abs_near_zero"):
        if kind is RowBatch or name not in ("mean", "std"):
            np.testing.assert_array_equal(getattr(data, name)[1, :2], getattr(per_layer, name)[0, :2], err_msg=name)
        else:
            # the per-layer path sums in float32, in an order that depends on the thread count: 1e-5 is
            # what one thread's sum of this conv's 100k values is off by
            np.testing.assert_allclose(getattr(data, name)[1, :2], getattr(per_layer, name)[0, :2], rtol=5e-5)


def test_a_module_called_small_then_large_keeps_its_large_last_call(mnist_tensors):
    # The first call (2 images) goes into the batched row, the second (400 images: 313,600 values, over
    # RowBatch.max_elements) is counted on its own; the row must hold the second, as for any repeated call.

    class TwoCalls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()
            self.tail = nn.ReLU()  # a second watched layer, so the row is still open after act's calls

        def forward(self, x):
            self.act(x[:2])
            out = self.act(x - 0.3)
            return self.tail(out[:2])

    x = mnist_tensors[0][:400]
    model = TwoCalls()
    data = record_one_batch(model, x, sample=None, modules=["act", "tail"]).data()
    last = torch.relu(x - 0.3)
    assert last.numel() > RowBatch.max_elements
    expected = fastai_stats(last)
    assert data.mean[0, 0] == pytest.approx(expected["mean"], rel=1e-5)
    assert data.near_zero[0, 0] == pytest.approx(expected["near_zero"], abs=2 / last.numel())
    assert np.abs(data.hist[0, 0] - expected["hist"]).max() <= 2
