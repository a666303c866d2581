"""models/changes.py: each change a rerun applies to a built model, checked against the model written right
(the same layers and seed, built by hand) or against the formula the change stands for."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convscope.config import TrainConfig
from convscope.errors import ConfigError
from convscope.models.changes import apply_model_changes
from convscope.models.cnn import simple_cnn


def batch(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_default_init_undoes_zero_weights_and_negative_biases():
    torch.manual_seed(0)
    model = simple_cnn(bn=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.fill_(-5.0)
    apply_model_changes(model, {"init": "default"})
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # PyTorch's Conv2d default: kaiming_uniform(a=sqrt(5)) = U(-b, b) with b = 1/sqrt(fan_in), std b/sqrt(3)
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            assert m.weight.abs().max() <= bound
            assert m.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.2)
            assert m.bias.abs().max() <= bound  # biases U(-b, b) too: none left at -5


def test_relu_for_sigmoid_gives_the_model_written_with_relu():
    torch.manual_seed(0)
    sigmoid = simple_cnn(bn=False)
    for block in sigmoid.children():
        if hasattr(block, "act"):
            block.act = nn.Sigmoid()
    torch.manual_seed(0)
    relu = simple_cnn(bn=False)  # the same weights: replacing an activation draws no random numbers
    done = apply_model_changes(sigmoid, {"activation": "relu"})
    assert done == ["replaced 4 saturating activation(s) with nn.ReLU"]
    assert not any(isinstance(m, nn.Sigmoid) for m in sigmoid.modules())
    x = batch()
    torch.testing.assert_close(sigmoid(x), relu(x))


def test_an_output_sigmoid_stays_when_the_hidden_ones_become_relu():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1), nn.Sigmoid())
    apply_model_changes(model, {"activation": "relu"})
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.Sigmoid]


def test_removing_a_final_softmax_returns_the_logits():
    torch.manual_seed(0)
    inner = simple_cnn()
    model = nn.Sequential(inner, nn.Softmax(dim=1)).eval()
    apply_model_changes(model, {"remove": ["1"]})
    x = batch()
    torch.testing.assert_close(model(x), inner(x))


def test_unfreeze_and_dropout():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert apply_model_changes(model, {"unfreeze": True, "dropout": 0.1}) == [
        "unfroze 2 parameter(s)", "set p = 0.1 in 1 dropout layer(s)"]
    assert all(p.requires_grad for p in model.parameters()) and model[1].p == 0.1


def test_normalize_input_standardises_what_the_first_layer_sees():
    torch.manual_seed(0)
    model = simple_cnn(bn=False)
    conv = model.conv1.conv
    apply_model_changes(model, {"normalize_input": "conv1.conv"})
    x = batch() * 255 + 30  # pixels as 0-255, not normalised
    seen = []
    conv.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    model.train()(x)
    # training mode: each channel at its batch mean and (biased) variance, as BatchNorm2d without affine does
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(seen[0], (x - mean) / torch.sqrt(var + 1e-5))


def test_a_change_the_model_cannot_take_is_one_clear_error():
    with pytest.raises(ConfigError, match="no module 'head'"):
        apply_model_changes(simple_cnn(), {"remove": ["head"]})
    with pytest.raises(ConfigError, match="not a conv or linear layer"):
        apply_model_changes(simple_cnn(), {"normalize_input": "conv1.act"})
    with pytest.raises(ConfigError, match="unknown model change 'prune'"):
        TrainConfig(model_changes={"prune": 0.5})
    with pytest.raises(ConfigError, match="dropout=1.5"):
        TrainConfig(model_changes={"dropout": 1.5})


def test_a_run_built_with_changes_trains_the_changed_model(data_dir, tmp_path):
    """build_model applies the config's changes: the model it returns has them."""
    from convscope.experiments.setup import build_batches, build_model

    cfg = TrainConfig(data_root=str(data_dir), limit_train=256, bs=64, device="cpu", bn=False,
                      model_changes={"normalize_input": "conv1.conv"})
    train, valid, info = build_batches(cfg, torch.device("cpu"))
    model = build_model(cfg, info, torch.device("cpu"), valid)
    assert isinstance(model.conv1.conv, nn.Sequential) and isinstance(model.conv1.conv[0], nn.BatchNorm2d)
