"""Gradient noise scale: the estimator against closed forms, the callback against independent computations.

Known answer used throughout: linear regression y = x.w* + eps with x ~ N(0, I_d), eps ~ N(0, s^2) and
the per-example loss (x.w - y)^2. At w = w* + delta the per-example gradient is g = 2(x.delta - eps) x, so

    G = E g = 2 delta,  |G|^2 = 4 |delta|^2,  tr(Sigma) = E|g|^2 - |G|^2 = 4 (|delta|^2 (d + 1) + s^2 d)

(E[(x.delta)^2 |x|^2] = |delta|^2 (d + 2) for a standard Gaussian), hence B_simple = (d + 1) + s^2 d / |delta|^2.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.data.batches import DeviceBatches
from convscope.errors import ConfigError
from convscope.models.cnn import simple_cnn
from convscope.stats.activations import ActivationStats
from convscope.stats.noise_scale import (
    GradientNoiseScale,
    ema,
    ratio_of_means,
    running_b_simple,
    unbiased_estimates,
)
from convscope.train import Callback, Learner
from convscope.train.run_saver import RunSaver

D, S = 8, 1.0  # input dimension and label-noise std; |delta| = 1 below
G2_TRUE, TR_TRUE = 4.0, 4.0 * ((D + 1) + S**2 * D)
B_SIMPLE_TRUE = TR_TRUE / G2_TRUE  # 17


def regression_batches(rng: np.random.Generator, k: int, b: int) -> np.ndarray:
    """Per-example gradients [k, b, D] at w = w* + e_1 for k independent batches of b examples."""
    x = rng.standard_normal((k, b, D))
    residual = x[..., 0] - S * rng.standard_normal((k, b))  # x.delta - eps with delta = e_1
    return 2 * residual[..., None] * x


# --------------------------------------------------------------------------- the pure estimator
def test_estimates_invert_the_expected_squared_norms_exactly():
    """Feed E|G_B|^2 = |G|^2 + tr/B itself: the two unknowns come back (checks the algebra)."""
    g2, tr = 2.5, 300.0
    for b_small, b_big in [(32, 64), (1, 2), (100, 1000)]:
        est_g2, est_tr = unbiased_estimates(g2 + tr / b_small, g2 + tr / b_big, b_small, b_big)
        assert est_g2 == pytest.approx(g2, rel=1e-12) and est_tr == pytest.approx(tr, rel=1e-12)


def test_estimates_are_unbiased_on_linear_regression():
    """Monte Carlo over 20,000 batch pairs: means within 4 standard errors of the closed form, and the ratio
    of means within 6% of B_simple = 17 (the standard errors here are about 1.5% and 1.7%)."""
    rng = np.random.default_rng(0)
    g = regression_batches(rng, 20_000, 64)
    g2_big = (g.mean(1) ** 2).sum(-1)
    g2_small = (g[:, :32].mean(1) ** 2).sum(-1)  # nested, as the callback measures
    g2, tr = unbiased_estimates(g2_small, g2_big, 32, 64)
    for est, truth in ((g2, G2_TRUE), (tr, TR_TRUE)):
        se = est.std() / np.sqrt(len(est))
        assert se < 0.03 * truth
        assert abs(est.mean() - truth) < 4 * se
    assert ratio_of_means(g2, tr) == pytest.approx(B_SIMPLE_TRUE, rel=0.06)
    # The paper's smoothing (here slow, beta 0.999: ~2,000 pairs) lands close to the truth too.
    b_simple, _, _ = running_b_simple(g2_small, g2_big, 32, 64, beta=0.999)
    assert b_simple[-1] == pytest.approx(B_SIMPLE_TRUE, rel=0.2)


def test_b_simple_is_the_ratio_of_two_emas_not_an_ema_of_ratios():
    rng = np.random.default_rng(1)
    g2_small, g2_big = rng.uniform(2, 3, 50), rng.uniform(0.5, 1.5, 50)
    beta = 0.9
    b_simple, g2_ema, tr_ema = running_b_simple(g2_small, g2_big, 8, 32, beta)
    g2, tr = unbiased_estimates(g2_small, g2_big, 8, 32)
    # Reference EMA written out as weights: sum_i (1 - beta) beta^(t - i) x_i / (1 - beta^(t + 1)).
    for t in (0, 9, 49):
        w = (1 - beta) * beta ** np.arange(t, -1, -1) / (1 - beta ** (t + 1))
        assert g2_ema[t] == pytest.approx(w @ g2[: t + 1]) and tr_ema[t] == pytest.approx(w @ tr[: t + 1])
        assert b_simple[t] == pytest.approx((w @ tr[: t + 1]) / (w @ g2[: t + 1]))
    assert not np.allclose(b_simple, ema(tr / g2, beta))


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="b_small < b_big"):
        unbiased_estimates(1.0, 1.0, 64, 64)
    with pytest.raises(ConfigError, match="beta"):
        ema(np.ones(3), 1.0)
    for kwargs in ({"every": 0}, {"n_micro": 1}, {"micro_bs": 0}, {"beta": 1.5}, {"every": 2.5}):
        with pytest.raises(ConfigError):
            GradientNoiseScale(**kwargs)


# --------------------------------------------------------------------------- the callback
def test_callback_recovers_the_noise_scale_of_a_linear_regression():
    """A real Learner on nn.Linear; truth = exact per-example gradients of the whole population (float64).

    SGD with lr 1e-9 keeps w where it started, so the truth holds for every step. 2,048 measurements at
    B_big 64 / B_small 32: standard error of the ratio about 5%; we require 20%.
    """
    n = 65_536
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=gen)
    w_star = torch.randn(D, generator=gen)
    y = (x @ w_star + S * torch.randn(n, generator=gen)).unsqueeze(1)
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + torch.eye(D)[0]).unsqueeze(0))
    # The population's own truth, per example, in float64 numpy (no convscope code involved).
    xn, yn, w0 = x.double().numpy(), y.double().numpy()[:, 0], model.weight.detach().double().numpy()[0]
    per_example = 2 * (xn @ w0 - yn)[:, None] * xn
    g_mean = per_example.mean(0)
    g2_pop, tr_pop = g_mean @ g_mean, ((per_example - g_mean) ** 2).sum(1).mean()
    assert tr_pop / g2_pop == pytest.approx(B_SIMPLE_TRUE, rel=0.05)  # the finite population is Gaussian-like

    gns = GradientNoiseScale(every=1, n_micro=2)
    learn = Learner(model, DeviceBatches(x, y, 64, shuffle=True, drop_last=True), loss_func=F.mse_loss,
                    opt_func="sgd", lr=1e-9, metrics=(), cbs=[gns])
    learn.fit(2)
    assert learn.gradient_noise_scale is gns
    assert len(gns.steps) == 2048 and (gns.b_small == 32).all() and (gns.b_big == 64).all()
    assert torch.allclose(model.weight.double()[0], torch.from_numpy(w0), atol=1e-5)
    assert gns.g2.mean() == pytest.approx(g2_pop, rel=0.1)
    assert gns.tr_sigma.mean() == pytest.approx(tr_pop, rel=0.15)
    assert gns.b_simple_mean == pytest.approx(tr_pop / g2_pop, rel=0.2)
    assert np.nanmedian(gns.b_simple[len(gns.b_simple) // 2:]) == pytest.approx(tr_pop / g2_pop, rel=0.3)


class CountForwards(Callback):
    """Counts forward calls of the first conv (what an activation-statistics hook would see)."""

    def before_fit(self):
        self.calls = 0
        self.handle = self.learn.model[0].conv1.conv.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1

    def after_fit(self):
        self.handle.remove()


def cnn_with_dropout() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(simple_cnn(), nn.Dropout(0.2))  # dropout: random numbers drawn in every forward


def train_cnn(mnist_tensors, cbs):
    x, y, xt, yt = mnist_tensors
    counter = CountForwards()
    learn = Learner(cnn_with_dropout(), DeviceBatches(x[:2048], y[:2048], 256, shuffle=True, drop_last=True),
                    DeviceBatches(xt[:512], yt[:512], 512), cbs=[counter, ActivationStats(with_hist=False), *cbs])
    learn.fit_one_cycle(2, 0.06)
    return learn, counter.calls


def test_training_is_bit_identical_with_and_without_the_callback(mnist_tensors):
    """BatchNorm and dropout: same weights, BN buffers, optimizer state, losses, activation and gradient
    statistics; no extra forward."""
    plain, plain_forwards = train_cnn(mnist_tensors, [])
    measured, measured_forwards = train_cnn(mnist_tensors, [GradientNoiseScale(every=1, flush_every=3)])
    assert len(measured.gradient_noise_scale.steps) == 16
    for (name, a), b in zip(plain.model.state_dict().items(), measured.model.state_dict().values()):
        assert torch.equal(a, b), name
    for sa, sb in zip(plain.opt.state.values(), measured.opt.state.values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert np.array_equal(plain.recorder.losses, measured.recorder.losses)
    a, b = plain.activation_stats.data, measured.activation_stats.data
    for field in ("steps", "mean", "std", "near_zero", "grad_norm", "update_ratio"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    assert plain_forwards == measured_forwards == 16 + 2  # 16 training batches + 2 validation passes


def test_recorded_norms_match_an_independent_autograd_computation(mnist_tensors):
    """First measured step, recomputed by hand on a copy of the initial model (train mode, BatchNorm)."""
    x, y, _, _ = mnist_tensors
    torch.manual_seed(0)
    model = simple_cnn()
    initial = copy.deepcopy(model)
    gns = GradientNoiseScale(every=3, micro_bs=96)
    learn = Learner(model, DeviceBatches(x[:1024], y[:1024], 256), cbs=[gns])
    learn.fit(1, 1e-3)
    assert gns.steps.tolist() == [0, 3] and gns.b_small.tolist() == [96, 96] and gns.b_big.tolist() == [256, 256]

    initial.train()
    pred = initial(x[:256])
    params = list(initial.parameters())

    def squared_norm(loss):
        return sum(g.double().pow(2).sum() for g in torch.autograd.grad(loss, params, retain_graph=True)).item()

    assert gns.g2_small[0] == pytest.approx(squared_norm(F.cross_entropy(pred[:96], y[:96])), rel=1e-4)
    assert gns.g2_big[0] == pytest.approx(squared_norm(F.cross_entropy(pred, y[:256])), rel=1e-4)


def test_run_saver_writes_noise_scale_npz(mnist_tensors, tmp_path):
    x, y, _, _ = mnist_tensors
    torch.manual_seed(0)
    learn = Learner(simple_cnn(), DeviceBatches(x[:2048], y[:2048], 128, shuffle=True, drop_last=True),
                    cbs=[RunSaver(tmp_path, {}), GradientNoiseScale(every=2, beta=0.8)])
    learn.fit(1, 1e-3)
    with np.load(tmp_path / "noise_scale.npz", allow_pickle=False) as f:
        saved = {k: f[k] for k in f.files}
    assert saved["step"].tolist() == list(range(0, 16, 2))
    assert {"g2_small", "g2_big", "b_small", "b_big", "g2", "tr_sigma", "b_simple"} <= set(saved)
    # The saved B_simple is the ratio of EMAs of the saved raw norms, recomputed here from scratch.
    g2 = (128 * saved["g2_big"] - 64 * saved["g2_small"]) / 64
    tr = (saved["g2_small"] - saved["g2_big"]) / (1 / 64 - 1 / 128)
    m_g, m_t = 0.0, 0.0
    for i in range(len(g2)):
        m_g, m_t = 0.8 * m_g + 0.2 * g2[i], 0.8 * m_t + 0.2 * tr[i]
        if m_g > 0:
            assert saved["b_simple"][i] == pytest.approx(m_t / m_g)
