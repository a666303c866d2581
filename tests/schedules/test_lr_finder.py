"""lr_find on real MNIST: the sweep against its closed form, the smoothing against a hand loop, exact
restoration of everything it touches, repeats, the plots, and a recommendation that trains to >= 98%."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, TensorDataset

from convscope.data.batches import DeviceBatches
from convscope.errors import ConfigError
from convscope.models.cnn import simple_cnn
from convscope.plots.schedules import plot_lr_find, plot_schedule
from convscope.train import Learner
from convscope.train.lr_finder import LRFinder, lr_find


@pytest.fixture(scope="module")
def small(mnist_tensors):
    """2048 real training images and 1024 test images: at bs 64, 32 steps per epoch."""
    x, y, xt, yt = mnist_tensors
    return x[:2048], y[:2048], xt[:1024], yt[:1024]


def make_learner(small, bn: bool = True, opt: str = "adamw", seed: int = 0) -> Learner:
    x, y, xt, yt = small
    torch.manual_seed(seed)
    train = DeviceBatches(x, y, bs=64, shuffle=True, drop_last=True, seed=seed)
    return Learner(simple_cnn(bn=bn), train, DeviceBatches(xt, yt, bs=1024), opt_func=opt)


# --------------------------------------------------------------------------- the sweep
def test_sweep_lrs_follow_the_exponential_and_span_epochs(small):
    learn = make_learner(small)
    res = lr_find(learn, start_lr=1e-6, end_lr=1.0, num_it=45, stop_div=False)  # 45 steps > 32 per epoch
    sw = res.sweeps[0]
    i = np.arange(45)
    np.testing.assert_allclose(sw.lrs, 1e-6 * (1.0 / 1e-6) ** (i / 44), rtol=1e-12)
    assert sw.lrs[0] == pytest.approx(1e-6) and sw.lrs[-1] == pytest.approx(1.0)
    assert sw.stop_reason == "ran all steps"


def test_smoothed_loss_is_the_bias_corrected_moving_average(small):
    sw = lr_find(make_learner(small), num_it=30, stop_div=False, beta=0.9).sweeps[0]
    avg, expected = 0.0, []
    for k, loss in enumerate(sw.raw_losses):
        avg = 0.9 * avg + 0.1 * loss
        expected.append(avg / (1 - 0.9 ** (k + 1)))
    np.testing.assert_allclose(sw.losses, expected, rtol=1e-12)
    assert sw.losses[0] == pytest.approx(sw.raw_losses[0])  # bias correction: no pull towards 0


def test_stops_when_the_smoothed_loss_diverges(small):
    learn = make_learner(small, bn=False, opt="sgd")
    sw = lr_find(learn, start_lr=1e-4, end_lr=1e4, num_it=100).sweeps[0]
    assert len(sw.losses) < 100
    best = np.minimum.accumulate(sw.losses[:-1])
    assert np.all(sw.losses[:-1] <= 4 * best)  # it did not run past a stopping point...
    last = sw.losses[-1]
    assert not math.isfinite(last) or last > 4 * best[-1]  # ...and stopped at the first one
    assert "step" in sw.stop_reason


# --------------------------------------------------------------------------- putting everything back
def state_of(learn: Learner) -> dict:
    """Copies of everything lr_find must leave as it found it."""
    opt = learn.opt.state_dict() if learn.opt is not None else None
    return {
        "model": {k: v.clone() for k, v in learn.model.state_dict().items()},
        "opt_state": None if opt is None else {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
                                               for k, s in opt["state"].items()},
        "opt_groups": None if opt is None else [dict(g) for g in opt["param_groups"]],
        "data": {k: v.clone() for k, v in learn.train_data.state_dict().items()},  # incl. the epoch's start
        "data_next_start": getattr(learn.train_data, "_next_start", 0),
        "rng": torch.get_rng_state(),
        "counters": (learn.train_iter, learn.epoch, learn.n_epochs, learn.lr, learn.training),
        "recorder": json.dumps([learn.recorder.steps, learn.recorder.epochs]),
        "cbs": list(learn.cbs),
        "grads": [p.grad for p in learn.model.parameters()],
        "training": learn.model.training,
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["model"].keys() == after["model"].keys()
    for k, v in before["model"].items():  # weights, BN running mean/var and num_batches_tracked
        assert torch.equal(v, after["model"][k]), k
    if before["opt_state"] is None:
        assert after["opt_state"] is None
    else:
        assert before["opt_state"].keys() == after["opt_state"].keys()
        for k, s in before["opt_state"].items():
            for n, t in s.items():
                assert torch.equal(t, after["opt_state"][k][n]), (k, n)
        assert before["opt_groups"] == after["opt_groups"]
    assert before["data"].keys() == after["data"].keys()
    for k, v in before["data"].items():
        assert torch.equal(v, after["data"][k]), k
    assert before["data_next_start"] == after["data_next_start"]
    assert torch.equal(before["rng"], after["rng"])
    for key in ("counters", "recorder", "cbs", "grads", "training"):
        assert before[key] == after[key], key


def test_everything_is_put_back_bit_identical(small):
    learn = make_learner(small)
    learn.fit_one_cycle(1, 0.01)  # optimizer state, BN statistics, recorder rows, a used data order
    before, names = state_of(learn), set(vars(learn))
    assert before["model"]["conv1.bn.num_batches_tracked"] > 0
    res = lr_find(learn, num_it=40, repeats=2)  # 40 steps: more than one epoch of 32
    assert len(res.sweeps) == 2
    assert_same_state(before, state_of(learn))
    assert set(vars(learn)) == names | {"lr_finder"}  # the finder stays reachable by name, like any callback


def test_a_learner_without_optimizer_has_none_afterwards(small):
    learn = make_learner(small)
    before = state_of(learn)
    lr_find(learn, num_it=20)
    assert learn.opt is None
    assert not hasattr(learn, "n_iter") and not hasattr(learn, "xb")  # what the sweep's fit set is gone
    assert_same_state(before, state_of(learn))


def test_put_back_also_when_the_sweep_raises(small):
    learn = make_learner(small)
    learn.fit(1, 1e-3)
    before = state_of(learn)
    calls = {"n": 0}

    def failing_loss(pred, target):
        calls["n"] += 1
        if calls["n"] == 15:
            raise RuntimeError("boom in step 15")
        return torch.nn.functional.cross_entropy(pred, target)

    learn.loss_func = failing_loss
    with pytest.raises(RuntimeError, match="boom"):
        lr_find(learn, num_it=30)
    assert calls["n"] == 15
    learn.loss_func = torch.nn.functional.cross_entropy
    assert_same_state(before, state_of(learn))


def test_a_fit_after_lr_find_gives_exactly_the_same_losses(small):
    plain, probed = make_learner(small), make_learner(small)
    lr_find(probed, num_it=40, repeats=2)
    plain.fit_one_cycle(1, 0.02)
    probed.fit_one_cycle(1, 0.02)
    assert np.array_equal(plain.recorder.losses, probed.recorder.losses)
    assert plain.recorder.epochs[0]["accuracy"] == probed.recorder.epochs[0]["accuracy"]


@pytest.mark.parametrize("own_generator", [True, False], ids=["loader-generator", "global-rng"])
def test_a_dataloader_is_put_back_too(small, own_generator):
    x, y = small[0][:1024], small[1][:1024]

    def learner() -> Learner:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0) if own_generator else None
        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=gen)
        return Learner(simple_cnn(), loader)

    plain, probed = learner(), learner()
    rng = torch.get_rng_state()
    lr_find(probed, num_it=20, repeats=2)
    assert torch.equal(torch.get_rng_state(), rng)
    for learn in (plain, probed):  # both fits draw from the one global RNG: give each the same start
        torch.set_rng_state(rng)
        learn.fit(1, 1e-3)
    assert np.array_equal(plain.recorder.losses, probed.recorder.losses)


# --------------------------------------------------------------------------- repeats and the result
def test_repeats_use_different_orders_from_the_same_start(small):
    learn = make_learner(small)  # its data order: seed 0
    start = copy.deepcopy(learn.model)
    res = lr_find(learn, num_it=30, repeats=3, seed=7)
    sweeps = res.sweeps
    assert [sw.order_seed for sw in sweeps] == [None, 8, 9]
    for sw in sweeps[1:]:
        np.testing.assert_array_equal(sw.lrs, sweeps[0].lrs)
        assert not np.array_equal(sw.raw_losses, sweeps[0].raw_losses)  # other batches
    # Each sweep's first loss is the *starting* model's loss on that order's first batch.
    x, y = small[0], small[1]
    for sw, order_seed in zip(sweeps, (0, 8, 9)):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(order_seed))[:64]
        with torch.no_grad():
            expected = torch.nn.functional.cross_entropy(copy.deepcopy(start).train()(x[idx]), y[idx])
        assert sw.raw_losses[0] == pytest.approx(expected.item(), rel=1e-5)
    for name, spread in res.suggestions.items():
        v = res.values(name)
        assert spread["min"] == v.min() and spread["max"] == v.max()
        assert spread["median"] == pytest.approx(np.sort(v)[1])  # the middle of three
    # Run twice from the same learner: the same sweeps.
    again = lr_find(learn, num_it=30, repeats=3, seed=7)
    for a, b in zip(sweeps, again.sweeps):
        np.testing.assert_array_equal(a.raw_losses, b.raw_losses)


def test_result_round_trips_through_json(small):
    res = lr_find(make_learner(small), num_it=30, repeats=2)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["recommended_lr_max"] == res.recommended_lr_max
    assert len(data["sweeps"]) == 2 and set(data["suggestions"]) == {"minimum", "steep", "valley", "slide", "edge"}
    assert data["reasoning"] == res.reasoning and "lr_max" in res.reasoning
    for sw, d in zip(res.sweeps, data["sweeps"]):
        assert d["suggestions"]["valley"]["index"] == sw.suggestions["valley"].index


@pytest.mark.parametrize("kwargs, message", [
    ({"start_lr": 1.0, "end_lr": 1.0}, "start_lr must be below end_lr"),
    ({"start_lr": 0.0}, "start_lr must be a finite number > 0"),
    ({"end_lr": float("nan")}, "end_lr must be a finite number > 0"),
    ({"num_it": 4}, "num_it must be a whole number >= 5"),
    ({"repeats": 0}, "repeats must be a whole number >= 1"),
    ({"beta": 1.0}, "beta"),
])
def test_bad_arguments_are_config_errors(small, kwargs, message):
    learn = make_learner(small)
    with pytest.raises(ConfigError, match=message):
        learn.lr_find(**kwargs)
    if "repeats" not in kwargs:  # the callback checks the same, for use in a plain fit
        with pytest.raises(ConfigError, match=message):
            LRFinder(**kwargs)


# --------------------------------------------------------------------------- plots
def test_plot_lr_find_draws_every_sweep_and_suggestion(small, tmp_path):
    res = lr_find(make_learner(small), num_it=30, repeats=2)
    for source in (res, json.loads(json.dumps(res.to_dict()))):  # the live result and lr_find.json
        fig = plot_lr_find(source)
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        for name in ("edge", "valley", "steep", "recommended lr_max"):  # drawn, each with what it marks
            assert any(label.startswith(name) and ":" in label for label in labels), (name, labels)
        assert any(label.startswith("not drawn") and "minimum" in label and "slide" in label for label in labels)
        markers = [ln for ln in ax.get_lines() if ln.get_marker() == "o" and len(ln.get_xdata()) == 1]
        assert len(markers) == 3  # one per drawn suggestion, not one per sweep
        assert len(ax.patches) <= 1  # at most one band: edge's spread over the sweeps
        curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(res.sweeps[0].lrs)]
        assert len(curves) == 4  # raw and its centred mean for each of the 2 sweeps
        # The smoothed curve is the centred mean of the raw loss (no lag), computed here independently.
        raw = np.asarray(res.sweeps[0].raw_losses, dtype=np.float64)
        lrs = np.asarray(res.sweeps[0].lrs, dtype=np.float64)
        window = max(3, int(round(0.25 * (len(lrs) - 1) / np.log10(lrs[-1] / lrs[0]))) | 1)
        half = window // 2
        expected = [np.nanmean(raw[max(0, k - half):k + half + 1]) for k in range(len(raw))]
        np.testing.assert_allclose(curves[1].get_ydata(), expected, rtol=1e-9)
    fig.savefig(tmp_path / "lr_find.png")
    assert (tmp_path / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_recorder_plot_sched_shows_the_one_cycle(small):
    learn = make_learner(small)
    learn.fit_one_cycle(2, 0.01)
    fig = learn.recorder.plot_sched()
    ax_lr, ax_mom = fig.axes
    np.testing.assert_array_equal(ax_lr.get_lines()[0].get_ydata(), learn.recorder.lrs)
    np.testing.assert_array_equal(ax_mom.get_lines()[0].get_ydata(), learn.recorder.moms)
    assert max(ax_lr.get_lines()[0].get_ydata()) == pytest.approx(0.01, rel=1e-3)
    assert len([ln for ln in ax_lr.get_lines() if ln.get_linestyle() == ":"]) == 1  # the second epoch
    with pytest.raises(ConfigError, match="no learning rates"):
        plot_schedule({"lr": np.array([])})
    with pytest.raises(ConfigError, match="two Axes"):
        plot_schedule({"lr": np.ones(3)}, ax=[ax_lr])


# --------------------------------------------------------------------------- the recommendation, for real
def test_recommended_lr_trains_mnist_to_98_percent_in_one_epoch(mnist_tensors):
    """simple_cnn + BN, bs 512, full MNIST: fit_one_cycle(1, recommended) reaches >= 98% test accuracy."""
    x, y, xt, yt = mnist_tensors
    torch.manual_seed(42)
    train = DeviceBatches(x, y, bs=512, shuffle=True, drop_last=True, seed=42)
    learn = Learner(simple_cnn(), train, DeviceBatches(xt, yt, bs=1024))
    res = learn.lr_find()
    assert 0.01 < res.recommended_lr_max < 1.0, res.reasoning
    learn.fit_one_cycle(1, res.recommended_lr_max)
    assert learn.recorder.epochs[-1]["accuracy"] >= 0.98, (res.recommended_lr_max, learn.recorder.epochs)
