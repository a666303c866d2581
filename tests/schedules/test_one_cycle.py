"""1cycle against its closed form, against torch's OneCycleLR, and as applied by a real fit.

Parameter mapping to torch.optim.lr_scheduler.OneCycleLR:
    max_lr = lr_max, div_factor = div, final_div_factor = div_final / div (torch divides the *initial*
    lr, we divide lr_max), pct_start = pct_start, anneal_strategy = "cos",
    base_momentum = moms[1], max_momentum = moms[0] (= moms[2]).
Both put step 0 at the start value and the last step at the end value. They differ in where the peak
falls: torch at step pct_start*T - 1, we at position pct_start of (T - 1) steps, i.e. (1 - pct_start)
steps apart. The tolerance below is that shift times the cosine's steepest slope.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convscope.data.batches import DeviceBatches
from convscope.models.cnn import simple_cnn
from convscope.schedules import one_cycle_lr, one_cycle_mom, step_position
from convscope.train import Learner


def closed_form_lr(i: int, total: int, lr_max: float, pct: float, div: float, div_final: float) -> float:
    pos = i / (total - 1)
    lo, hi, end = lr_max / div, lr_max, lr_max / div_final
    if pos <= pct:
        return lo + (hi - lo) * (1 - math.cos(math.pi * pos / pct)) / 2
    return hi + (end - hi) * (1 - math.cos(math.pi * (pos - pct) / (1 - pct))) / 2


def torch_one_cycle(total: int, lr_max: float, pct: float, div: float, div_final: float):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=lr_max, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr_max, total_steps=total, pct_start=pct, div_factor=div,
        final_div_factor=div_final / div, anneal_strategy="cos", base_momentum=0.85, max_momentum=0.95,
    )
    lrs, moms = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    return np.array(lrs), np.array(moms)


@pytest.mark.parametrize("total", [50, 117, 585])
@pytest.mark.parametrize("pct", [0.25, 0.3])
def test_lr_curve_equals_closed_form(total, pct):
    curve = one_cycle_lr(0.06, pct, 25, 1e5)
    ours = [curve(step_position(i, total)) for i in range(total)]
    expected = [closed_form_lr(i, total, 0.06, pct, 25, 1e5) for i in range(total)]
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("total", [117, 585, 10_000])
def test_lr_and_momentum_match_torch_one_cycle(total):
    lr_max, pct, div, div_final = 0.06, 0.25, 25.0, 1e5
    t_lrs, t_moms = torch_one_cycle(total, lr_max, pct, div, div_final)
    lr_curve, mom_curve = one_cycle_lr(lr_max, pct, div, div_final), one_cycle_mom((0.95, 0.85, 0.95), pct)
    lrs = np.array([lr_curve(step_position(i, total)) for i in range(total)])
    moms = np.array([mom_curve(step_position(i, total)) for i in range(total)])
    # Endpoints agree exactly (up to float rounding).
    assert lrs[0] == pytest.approx(t_lrs[0], rel=1e-9) and lrs[-1] == pytest.approx(t_lrs[-1], rel=1e-6)
    assert moms[0] == pytest.approx(t_moms[0]) and moms[-1] == pytest.approx(t_moms[-1])
    # Peak placement differs by (1 - pct) steps: bound = shift * max slope of the warm-up cosine.
    warmup_steps = pct * total
    tol = (1 - pct) * (math.pi / 2) / warmup_steps * 1.05
    assert np.max(np.abs(lrs - t_lrs)) / lr_max <= tol
    assert np.max(np.abs(moms - t_moms)) / 0.1 <= tol
    assert lrs.max() == pytest.approx(lr_max, rel=1e-3) and t_lrs.max() == pytest.approx(lr_max, rel=1e-3)


def test_fit_one_cycle_applies_the_curves_to_the_optimizer(mnist_tensors):
    """A real fit: the lr and Adam beta1 recorded at every step equal the curves' closed form."""
    x, y, _, _ = mnist_tensors
    dl = DeviceBatches(x[:2048], y[:2048], 256, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    learn = Learner(simple_cnn(), dl)
    learn.fit_one_cycle(2, 0.01, pct_start=0.3)
    total = 2 * len(dl)
    rec = learn.recorder
    assert len(rec.lrs) == total
    expected = [closed_form_lr(i, total, 0.01, 0.3, 25, 1e5) for i in range(total)]
    np.testing.assert_allclose(rec.lrs, expected, rtol=1e-9)
    assert rec.moms[0] == pytest.approx(0.95) and rec.moms.min() == pytest.approx(0.85, abs=2e-3)
    assert learn.opt.param_groups[0]["betas"][1] == 0.99  # beta2 untouched


def test_sgd_momentum_is_cycled(mnist_tensors):
    x, y, _, _ = mnist_tensors
    dl = DeviceBatches(x[:1024], y[:1024], 256, shuffle=True, drop_last=True)
    learn = Learner(simple_cnn(), dl, opt_func="sgd")
    learn.fit_one_cycle(1, 0.01)
    assert learn.recorder.moms[0] == pytest.approx(0.95)
    assert learn.opt.param_groups[0]["momentum"] == pytest.approx(0.95)
