"""FreezeLayers: a frozen layer stops changing at the scheduled step, autograd stops at it, and the
statistics say "frozen" (NaN) instead of "zero gradient"."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convscope.data.batches import DeviceBatches
from convscope.diagnose.rules import gradient_health
from convscope.errors import ConfigError
from convscope.models.cnn import simple_cnn
from convscope.stats.activations import ActivationStats
from convscope.train import Callback, Learner
from convscope.train.freeze import FreezeLayers, check_freeze

N_TRAIN, BS, EPOCHS = 2048, 256, 2
STEPS = N_TRAIN // BS * EPOCHS  # 16


class Snapshots(Callback):
    """Weights after every optimizer step, and whether conv2's input still needed a gradient."""

    order = 100

    def before_fit(self) -> None:
        self.conv1, self.conv2, self.bn1_mean, self.conv2_input_grad = [], [], [], []
        self.hook = self.learn.model.conv2.conv.register_forward_pre_hook(
            lambda m, args: self.conv2_input_grad.append(args[0].requires_grad) if self.learn.training else None)

    def after_step(self) -> None:
        m = self.learn.model
        self.conv1.append(m.conv1.conv.weight.detach().clone())
        self.conv2.append(m.conv2.conv.weight.detach().clone())
        self.bn1_mean.append(m.conv1.bn.running_mean.clone())

    def after_fit(self) -> None:
        self.hook.remove()


@pytest.fixture(scope="module")
def frozen_run(mnist_tensors):
    x, y, xt, yt = mnist_tensors
    torch.manual_seed(0)
    model = simple_cnn()
    train = DeviceBatches(x[:N_TRAIN], y[:N_TRAIN], BS, shuffle=True, drop_last=True)
    valid = DeviceBatches(xt[:512], yt[:512], 512)
    snaps, freeze = Snapshots(), FreezeLayers({"conv1": 0.5})
    learn = Learner(model, train, valid, cbs=[freeze, snaps, ActivationStats(every=1, sample=None)])
    learn.fit_one_cycle(EPOCHS, 0.01)
    return learn, snaps, freeze


def test_the_frozen_layer_stops_changing_at_the_scheduled_step(frozen_run):
    learn, snaps, freeze = frozen_run
    at = math.ceil(0.5 * STEPS)  # the first step whose share of training done (step / 16) is >= 0.5
    assert freeze.frozen_at == {"conv1": at}
    moved = [not torch.equal(a, b) for a, b in zip(snaps.conv1, snaps.conv1[1:])]
    # snaps[k] is after step k: conv1 moves in steps 1..at-1 and never from step `at` on.
    assert all(moved[: at - 1]) and not any(moved[at - 1 :])
    assert all(not torch.equal(a, b) for a, b in zip(snaps.conv2, snaps.conv2[1:]))  # conv2 trains to the end
    # The frozen block still normalises with batch statistics, so its running averages keep moving.
    assert not torch.equal(snaps.bn1_mean[at], snaps.bn1_mean[-1])


def test_autograd_does_not_reach_into_the_frozen_block(frozen_run):
    _, snaps, freeze = frozen_run
    at = freeze.frozen_at["conv1"]
    # conv2's input needs a gradient only while conv1's block trains: afterwards backward stops at conv2.
    assert snaps.conv2_input_grad == [True] * at + [False] * (STEPS - at)


def test_the_statistics_mark_frozen_layers_instead_of_a_zero_gradient(frozen_run):
    learn, _, freeze = frozen_run
    stats = learn.activation_stats.data
    at, steps = freeze.frozen_at["conv1"], stats.steps
    for layer in ("conv1.conv", "conv1.bn"):
        j = stats.layers.index(layer)
        assert np.all(np.isfinite(stats.grad_norm[steps < at, j])) and np.all(stats.grad_norm[steps < at, j] > 0)
        assert np.all(np.isnan(stats.grad_norm[steps >= at, j]))
        assert np.all(np.isnan(stats.update_ratio[steps >= at, j]))
    assert np.all(np.isfinite(stats.grad_norm[:, stats.layers.index("conv2.conv")]))

    class Run:  # what the rules read from a run
        activation_stats = stats

    assert not [f for f in gradient_health(Run()) if f.rule == "vanishing_gradients"]


def test_the_model_is_trainable_again_after_fit(frozen_run):
    learn, _, _ = frozen_run
    assert all(p.requires_grad for p in learn.model.parameters())


def test_check_freeze_names_the_layers_it_accepts():
    model = simple_cnn()
    assert check_freeze(model, {"conv1": 0.3, "conv2.conv": 1}) == {"conv1": 0.3, "conv2.conv": 1.0}
    with pytest.raises(ConfigError, match="choose from conv1, conv2, conv3, conv4, conv5"):
        check_freeze(model, {"conv1.act": 0.5})  # a ReLU has no weights
    with pytest.raises(ConfigError, match=r"freeze conv1=1.5: the fraction of training must be in \[0, 1\]"):
        check_freeze(model, {"conv1": 1.5})
