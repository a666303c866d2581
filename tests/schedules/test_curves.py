"""Every schedule curve against its closed form, written out independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convscope.errors import ConfigError
from convscope.schedules import (
    Constant,
    Cosine,
    Exponential,
    Linear,
    StepDecay,
    phases,
    warmup_constant,
    warmup_cosine,
)

POS = np.linspace(0, 1, 101)


def test_constant_linear_cosine_exponential():
    assert [Constant(0.3)(p) for p in POS] == [0.3] * len(POS)
    np.testing.assert_allclose([Linear(1.0, 3.0)(p) for p in POS], 1.0 + 2.0 * POS)
    np.testing.assert_allclose([Cosine(1.0, 0.0)(p) for p in POS], (np.cos(np.pi * POS) + 1) / 2, atol=1e-15)
    np.testing.assert_allclose([Exponential(1e-7, 10.0)(p) for p in POS], np.exp(np.log(1e-7) + POS * np.log(1e8)),
                               rtol=1e-12)


def test_phases_join_curves_at_their_shares():
    curve = phases([0.3, 0.7], [Linear(0.0, 1.0), Linear(1.0, 0.0)])
    expected = np.where(POS <= 0.3, POS / 0.3, 1 - (POS - 0.3) / 0.7)
    np.testing.assert_allclose([curve(p) for p in POS], expected, atol=1e-12)
    with pytest.raises(ConfigError):
        phases([0.5, 0.6], [Constant(1), Constant(2)])


def test_warmup_cosine_and_warmup_constant():
    wc = warmup_cosine(0.1, warmup_pct=0.1, final_div=1e4)
    for p in POS:
        if p <= 0.1:
            expected = 0.1 * p / 0.1
        else:
            q = (p - 0.1) / 0.9
            expected = 0.1 / 1e4 + (0.1 - 0.1 / 1e4) * (1 + math.cos(math.pi * q)) / 2
        assert wc(p) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    wk = warmup_constant(0.05, warmup_pct=0.2)
    np.testing.assert_allclose([wk(p) for p in POS], np.minimum(POS / 0.2, 1.0) * 0.05, atol=1e-15)


def test_step_decay():
    sd = StepDecay(1.0, milestones=(0.5, 0.75), gamma=0.1)
    np.testing.assert_allclose([sd(p) for p in POS], np.where(POS >= 0.75, 0.01, np.where(POS >= 0.5, 0.1, 1.0)))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_bad_warmup_share_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="pct_start"):
        warmup_cosine(0.1, warmup_pct=bad)
