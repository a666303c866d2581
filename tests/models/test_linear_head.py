"""simple_cnn(head="linear") against the book's last conv, computed independently."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.errors import ConfigError
from convscope.models.cnn import simple_cnn


def test_the_book_last_conv_on_a_2x2_grid_is_a_linear_layer_of_its_4_live_taps():
    # Book head: Conv2d(64, 10, 3, stride 2, padding 1) on a 2x2 grid -> 1x1. Output (0, 0) sees padded rows
    # and columns -1..1, so only kernel taps [1:3, 1:3] meet real inputs; a Linear layer holding exactly
    # those taps must give the same logits.
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 10, 3, stride=2, padding=1)
    x = torch.randn(5, 64, 2, 2)
    fc = nn.Linear(256, 10)
    with torch.no_grad():
        fc.weight.copy_(conv.weight[:, :, 1:3, 1:3].reshape(10, 256))
        fc.bias.copy_(conv.bias)
    torch.testing.assert_close(fc(x.flatten(1)), conv(x).flatten(1))


def test_linear_head_model_shapes_and_names():
    model = simple_cnn(head="linear")
    assert isinstance(model.head.fc, nn.Linear) and model.head.fc.in_features == 64 * 2 * 2
    assert isinstance(model.head.bn, nn.BatchNorm1d)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    # Other input sizes: the Linear layer is sized from the grid the convs leave (32 -> 16, 8, 4, 2).
    assert simple_cnn(head="linear", image_size=32, in_channels=3)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert not hasattr(simple_cnn(head="linear", bn=False).head, "bn")


def test_unknown_head_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown head 'mlp'"):
        simple_cnn(head="mlp")
