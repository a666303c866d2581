"""ActivationStats against an independent plain-PyTorch computation of fastai's definitions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from convscope.data.batches import DeviceBatches
from convscope.errors import ConfigError
from convscope.models.cnn import simple_cnn
from convscope.runs.store import create_run_dir
from convscope.stats import ActivationStats, has_hooks, watch
from convscope.stats.collector import StatsCollector
from convscope.stats.row_batch import DeviceRowBatch
from convscope.train import Callback, Learner
from convscope.train.run_saver import RunSaver


def reference_outputs(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every leaf module's output, by running the purely sequential model layer by layer (no hooks)."""
    outs = {}
    for name, module in model.named_modules():
        if name and not list(module.children()):
            x = module(x)
            outs[name] = x.detach()
    return outs


def fastai_stats(o: torch.Tensor, bins=40, lo=0.0, hi=10.0) -> dict[str, object]:
    """fastai's ActivationStats definitions, written out plainly, plus the dead-channel share."""
    o = o.float()
    channels = o.transpose(0, 1).reshape(o.shape[1], -1)
    return {"mean": o.mean().item(), "std": o.std().item(), "near_zero": (o <= 0.05).float().mean().item(),
            "hist": torch.histc(o, bins, lo, hi).numpy(), "dead": (channels <= 0).all(dim=1).float().mean().item(),
            # not fastai's: the share below zero and the share actually near zero
            "negative": (o < 0).float().mean().item(), "abs_near_zero": (o.abs() <= 0.05).float().mean().item()}


def record_one_batch(model: nn.Module, x: torch.Tensor, rows: str = "auto", **kwargs) -> StatsCollector:
    """A StatsCollector's row for one forward pass of `x`. rows: "auto" (the path the collector picks
    for this device), "per_layer" (compute.layer_stats for every layer instead of stats/row_batch.py) or
    "device" (row_batch.DeviceRowBatch, the GPU's path, here on the CPU)."""
    collector = StatsCollector(model, **kwargs)
    if rows == "per_layer":
        collector._batch = None
    elif rows == "device":
        b = collector._batch
        assert b is not None, "these settings take the per-layer path on every device"
        collector._batch = DeviceRowBatch(b.bins, b.ranges, collector.layouts)
    collector.attach()
    collector.begin_step(0)
    model(x)  # a training pass (grad enabled): passes under no_grad are not recorded
    collector.end_step()
    collector.detach()
    return collector


@pytest.fixture(scope="module")
def batch(mnist_tensors):
    x, y, _, _ = mnist_tensors
    return x[:512], y[:512]


@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("hist_range", ["auto", (0.0, 10.0), "signed", (0.0, 7.0)])
def test_one_batch_matches_plain_pytorch(batch, bn, hist_range):
    torch.manual_seed(0)
    model = simple_cnn(bn=bn).train()
    xb, _ = batch
    data = record_one_batch(model, xb, hist_range=hist_range).data()
    # "auto": fastai's [0, 10] after a ReLU, [-5, 5] before it (so a conv's negative half is counted)
    kinds = {"auto": {"ReLU": (0.0, 10.0), "Conv2d": (-5.0, 5.0), "BatchNorm2d": (-5.0, 5.0), "Linear": (-5.0, 5.0)}}
    ranges = [kinds["auto"].get(k) if hist_range == "auto" else (-10.0, 10.0) if hist_range == "signed"
              else hist_range for k in data.kinds]
    np.testing.assert_array_equal(data.hist_range, ranges)
    # BatchNorm in train mode updates running stats: rerun from the same state for the reference.
    torch.manual_seed(0)
    ref_model = simple_cnn(bn=bn).train()
    with torch.no_grad():
        ref = reference_outputs(ref_model, xb)
    assert data.layers == [n for n in ref if n != "flatten"]
    for i, name in enumerate(data.layers):
        lo, hi = ranges[i]
        expected = fastai_stats(ref[name], lo=lo, hi=hi)
        n = ref[name].numel()
        assert data.mean[0, i] == pytest.approx(expected["mean"], rel=1e-5, abs=1e-6), name
        assert data.std[0, i] == pytest.approx(expected["std"], rel=1e-4), name
        assert data.near_zero[0, i] == pytest.approx(expected["near_zero"], abs=2 / n), name
        assert data.negative[0, i] == pytest.approx(expected["negative"], abs=2 / n), name
        if lo > -0.05 and expected["negative"] > 0:  # no bin edge at -0.05 to count from: documented as unknown
            assert np.isnan(data.abs_near_zero[0, i]), name
        else:
            assert data.abs_near_zero[0, i] == pytest.approx(expected["abs_near_zero"], abs=2 / n), name
        assert data.dead[0, i] == pytest.approx(expected["dead"]), name
        # Counts agree up to values lying within float rounding of a bin edge.
        assert np.abs(data.hist[0, i] - expected["hist"]).max() <= max(2, 1e-5 * n), name


@pytest.mark.parametrize("channels_last", [False, True])
def test_dead_channels_and_moments_match_plain_pytorch_in_both_memory_layouts(batch, channels_last):
    # Channels 0-2 of conv1 and 0-4 of conv2 are killed (a large negative bias): their conv outputs are
    # <= 0 everywhere and their ReLU outputs 0, so the dead share is 3/8 and 5/16 there, and the
    # per-channel maxima are taken over a channels_last layout when asked (stats.compute.channel_maxima).
    torch.manual_seed(0)
    model = simple_cnn(head="linear").train()
    with torch.no_grad():
        model.get_submodule("conv1.conv").bias[:3] = -1e3
        model.get_submodule("conv2.conv").bias[:5] = -1e3
    xb, _ = batch
    if channels_last:
        model, xb = model.to(memory_format=torch.channels_last), xb.contiguous(memory_format=torch.channels_last)
    data = record_one_batch(model, xb, sample=None).data()
    with torch.no_grad():  # train-mode BatchNorm normalises with the batch statistics: same outputs again
        ref = reference_outputs(model, xb)
    dead = {}
    for i, name in enumerate(data.layers):
        expected = fastai_stats(ref[name])
        dead[name] = data.dead[0, i]
        assert data.dead[0, i] == pytest.approx(expected["dead"]), name
        assert data.mean[0, i] == pytest.approx(expected["mean"], rel=1e-5, abs=1e-6), name
        assert data.std[0, i] == pytest.approx(expected["std"], rel=1e-4), name
    assert dead["conv1.conv"] == dead["conv1.act"] == 3 / 8 and dead["conv2.act"] == 5 / 16


def test_channel_maxima_match_a_plain_reduction_in_every_layout():
    from convscope.stats.compute import channel_maxima

    torch.manual_seed(0)
    for shape in [(64, 8, 10, 10), (64, 16, 5, 5), (64, 64, 2, 2), (64, 64, 1, 1), (7, 3, 5, 5), (64, 1, 4, 4),
                  (64, 10), (63, 10), (5, 40)]:
        x = torch.randn(shape)
        expected = x.transpose(0, 1).reshape(shape[1], -1).amax(dim=1)
        layouts = [x, x.t().contiguous().t()] if x.ndim == 2 else [x, x.contiguous(memory_format=torch.channels_last)]
        for v in layouts:
            assert torch.equal(channel_maxima(v), expected), (shape, v.stride())
    y = torch.randn(6, 4, 8, 8)[:, :, ::2]  # neither layout: strided
    assert torch.equal(channel_maxima(y), y.transpose(0, 1).reshape(4, -1).amax(dim=1))
    assert torch.equal(channel_maxima(torch.tensor([-1.0, 2.0])), torch.tensor([2.0]))


def test_default_modules_include_activations_and_param_layers():
    model = simple_cnn()
    collector = StatsCollector(model)
    assert "conv1.act" in collector.layers and "conv1.conv" in collector.layers and "conv1.bn" in collector.layers
    assert "flatten" not in collector.layers
    assert StatsCollector(model, modules=[nn.Conv2d]).layers == [f"conv{i}.conv" for i in range(1, 6)]
    assert StatsCollector(model, modules="conv1.*").layers == ["conv1.conv", "conv1.act", "conv1.bn"]
    with pytest.raises(ConfigError, match="no module matches"):
        StatsCollector(model, modules="nope*")


def small_learner(mnist_tensors, cbs, n=4096, bs=256, bn=True):
    x, y, _, _ = mnist_tensors
    torch.manual_seed(0)
    return Learner(simple_cnn(bn=bn), DeviceBatches(x[:n], y[:n], bs, shuffle=True, drop_last=True), cbs=cbs)


def test_sampled_rows_equal_unsampled_rows_at_the_same_steps(mnist_tensors):
    full = small_learner(mnist_tensors, [ActivationStats(every=1, sample=None)])
    full.fit_one_cycle(1, 0.06)
    sampled = small_learner(mnist_tensors, [ActivationStats(every=4, sample=None)])
    sampled.fit_one_cycle(1, 0.06)
    a, b = full.activation_stats, sampled.activation_stats
    assert list(a.steps) == list(range(16)) and list(b.steps) == [0, 4, 8, 12]
    rows = [list(a.steps).index(s) for s in b.steps]
    for name in ("mean", "std", "near_zero", "dead", "hist", "grad_norm", "update_ratio"):
        np.testing.assert_array_equal(getattr(a, name)[rows], getattr(b, name), err_msg=name)
    # Recording never changes training: identical losses with and without statistics.
    plain = small_learner(mnist_tensors, [])
    plain.fit_one_cycle(1, 0.06)
    np.testing.assert_array_equal(plain.recorder.losses, full.recorder.losses)


def test_gradient_norm_and_update_ratio_match_independent_computation(mnist_tensors):
    class Reference(Callback):
        order = 30

        def __init__(self):
            self.grad, self.ratio = {}, {}

        def _modules(self):
            return [(n, m) for n, m in self.learn.model.named_modules() if list(m.parameters(recurse=False))]

        def after_backward(self):
            step = self.learn.train_iter
            self.grad[step] = {n: torch.sqrt(sum((p.grad.double() ** 2).sum() for p in m.parameters(recurse=False)))
                               for n, m in self._modules()}

        def before_step(self):
            self.before = {n: [p.detach().clone() for p in m.parameters(recurse=False)] for n, m in self._modules()}

        def after_step(self):
            step = self.learn.train_iter - 1
            ratios = {}
            for n, m in self._modules():
                delta = sum(((p.detach() - b).double() ** 2).sum() for p, b in zip(m.parameters(recurse=False),
                                                                                   self.before[n]))
                weight = sum((b.double() ** 2).sum() for b in self.before[n])
                ratios[n] = (delta / weight).sqrt().item()
            self.ratio[step] = ratios

    learn = small_learner(mnist_tensors, [ActivationStats(), Reference()], n=1024)
    learn.fit(1, 1e-3)
    stats, ref = learn.activation_stats, learn.reference
    for row, step in enumerate(stats.steps):
        for i, name in enumerate(stats.layers):
            if name in ref.grad[step]:
                assert stats.grad_norm[row, i] == pytest.approx(ref.grad[step][name].item(), rel=1e-4)
                assert stats.update_ratio[row, i] == pytest.approx(ref.ratio[step][name], rel=1e-3)
            else:  # activation modules own no parameters
                assert np.isnan(stats.grad_norm[row, i]) and np.isnan(stats.update_ratio[row, i])


def test_memory_stays_bounded_for_a_200_epoch_step_count():
    """200 epochs of MNIST at bs 512 = 23,400 steps, driven directly (no training)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))  # cost is not the point here
    collector = StatsCollector(model, max_rows=512)
    collector.attach()
    x = torch.randn(2, 1, 8, 8)
    layers, bins = len(collector.layers), collector.bins
    bound = 512 * layers * (6 * 8 + 2 * 4 + 2 + 4 * bins) + 512 * 8  # documented in stats/buffer.py
    total = 200 * 117
    for step in range(total):
        if collector.begin_step(step):
            model(x)  # only recorded steps need a forward for this test
        collector.end_step()
    collector.detach()
    data = collector.data()
    assert collector.buffer.host_nbytes() <= bound
    assert data.n_steps <= 512
    gaps = np.diff(data.steps)
    assert (gaps == data.every).all(), "kept rows are evenly spaced"
    assert data.steps[0] == 0 and data.steps[-1] > total - 1 - data.every, "the end of the run is kept"


class Boom(Callback):
    def __init__(self, exc):
        self.exc = exc

    def after_step(self):
        if self.learn.train_iter == 2:
            raise self.exc


@pytest.mark.parametrize("exc", [None, RuntimeError("boom"), KeyboardInterrupt()])
def test_no_hooks_left_after_fit_exception_or_interrupt(mnist_tensors, exc):
    learn = small_learner(mnist_tensors, [ActivationStats(every=1)], n=1024)
    cbs = [] if exc is None else [Boom(exc)]
    if exc is None:
        learn.fit(1, 1e-3, cbs=cbs)
    else:
        with pytest.raises(type(exc)):
            learn.fit(1, 1e-3, cbs=cbs)
    assert not has_hooks(learn.model)
    # Boom fires after step 1's update (train_iter counts completed steps): rows 0 and 1 were recorded.
    assert list(learn.activation_stats.steps) == ([0, 1, 2, 3] if exc is None else [0, 1])


def test_saved_run_loads_in_another_process(mnist_tensors, tmp_path):
    run_dir = create_run_dir(tmp_path, "run")
    learn = small_learner(mnist_tensors, [ActivationStats(every=1), RunSaver(run_dir, {"note": "test"})], n=1024)
    learn.fit(1, 1e-3)
    code = ("import sys, numpy as np, convscope; s = convscope.load_run(sys.argv[1]).activation_stats; "
            "np.savez(sys.argv[2], mean=s.mean, hist=s.hist, steps=s.steps, layers=np.array(s.layers))")
    subprocess.run([sys.executable, "-c", code, str(run_dir), str(tmp_path / "out.npz")], check=True)
    other = np.load(tmp_path / "out.npz")
    stats = learn.activation_stats
    np.testing.assert_array_equal(other["mean"], stats.mean)
    np.testing.assert_array_equal(other["hist"], stats.hist)
    assert list(other["layers"]) == stats.layers
    # Readable with numpy alone, as the run-directory contract says.
    with np.load(run_dir / "stats.npz") as raw:
        assert raw["mean"].shape == (4, len(stats.layers))


def test_watch_records_a_hand_written_loop(mnist_tensors, tmp_path):
    x, y, _, _ = mnist_tensors
    torch.manual_seed(0)
    model = simple_cnn().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(0)
    first_batch = reference_outputs(simple_cnn().train(), x[:128])
    with watch(model, run_dir=tmp_path / "mine", every=2, sample=None) as w:
        for i in range(5):
            xb, yb = x[i * 128:(i + 1) * 128], y[i * 128:(i + 1) * 128]
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            w.step(loss)
            opt.zero_grad()
        w.log(epoch=0, note="done")
    assert not has_hooks(model)
    from convscope import load_run

    run = load_run(tmp_path / "mine")
    stats = run.activation_stats
    assert list(stats.steps) == [0, 2, 4]
    assert run.metrics == [{"epoch": 0, "note": "done"}] and run.steps["loss"].shape == (5,)
    i = stats.layers.index("conv1.conv")
    assert stats.mean[0, i] == pytest.approx(first_batch["conv1.conv"].mean().item(), rel=1e-5)
    assert not np.isnan(stats.grad_norm[0, i]) and not np.isnan(stats.update_ratio[0, i])


def test_watch_refuses_an_existing_run_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    from convscope.errors import RunError

    with pytest.raises(RunError, match="already exists"):
        watch(simple_cnn(), run_dir=tmp_path / "taken")


@pytest.mark.parametrize("kwargs, match", [({"every": 0}, "every"), ({"bins": 0}, "bins"),
                                           ({"hist_range": (1, 1)}, "lo < hi"), ({"hist_range": "wide"}, "signed")])
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ActivationStats(**kwargs)


def test_adaptive_range_covers_the_first_batch(batch):
    torch.manual_seed(0)
    model = simple_cnn().train()
    collector = StatsCollector(model, hist_range="adaptive")
    collector.attach()
    collector.begin_step(0)
    model(batch[0])
    collector.detach()
    data = collector.data()
    torch.manual_seed(0)
    with torch.no_grad():
        ref = reference_outputs(simple_cnn().train(), batch[0])
    for i, name in enumerate(data.layers):
        lo, hi = data.hist_range[i]
        assert lo <= ref[name].min().item() and hi >= ref[name].max().item()
        assert data.hist[0, i].sum() == ref[name].numel()  # every value fell inside the range


@pytest.mark.slow
def test_full_epoch_sampled_rows_equal_unsampled_rows(mnist_tensors):
    """The whole MNIST epoch (117 steps at bs 512): every=4 rows equal the every=1 rows at those steps."""
    x, y, _, _ = mnist_tensors

    def run(every):
        torch.manual_seed(0)
        learn = Learner(simple_cnn(), DeviceBatches(x, y, 512, shuffle=True, drop_last=True),
                        cbs=[ActivationStats(every=every, sample=None)])
        learn.fit_one_cycle(1, 0.06)
        return learn.activation_stats.data

    full, sampled = run(1), run(4)
    assert full.n_steps == 117 and list(sampled.steps) == list(range(0, 117, 4))
    for name in ("mean", "std", "near_zero", "dead", "hist", "grad_norm", "update_ratio"):
        np.testing.assert_array_equal(getattr(full, name)[sampled.steps], getattr(sampled, name), err_msg=name)
