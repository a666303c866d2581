"""simple_cnn and conv_block: shapes, layer order, parameter counts, argument checks."""

import pytest
import torch
from torch import nn

from convscope.errors import ConfigError
from convscope.models import conv_block, simple_cnn

BLOCKS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def test_shapes_after_each_block():
    model = simple_cnn()
    x = torch.randn(2, 1, 28, 28)
    grids, chans = [], []
    for name in BLOCKS:
        x = model.get_submodule(name)(x)
        chans.append(x.shape[1])
        grids.append(x.shape[2])
        assert x.shape[2] == x.shape[3]
    assert grids == [14, 7, 4, 2, 1]
    assert chans == [8, 16, 32, 64, 10]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_layer_names_are_readable_and_addressable():
    model = simple_cnn()
    assert [n for n, _ in model.named_children()] == [*BLOCKS, "flatten"]
    assert isinstance(model.get_submodule("conv1.conv"), nn.Conv2d)
    assert isinstance(model.get_submodule("conv3.act"), nn.ReLU)
    assert isinstance(model.get_submodule("conv5.bn"), nn.BatchNorm2d)
    assert model.get_submodule("conv1.conv").kernel_size == (5, 5)
    assert model.get_submodule("conv2.conv").kernel_size == (3, 3)


def _types(block: nn.Module) -> list[type]:
    return [type(m) for m in block.children()]


def test_block_order_book_and_bn_first():
    book = simple_cnn()
    for name in BLOCKS[:-1]:
        assert _types(book.get_submodule(name)) == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    # the last block outputs logits: no ReLU, but BatchNorm as in the book
    assert _types(book.conv5) == [nn.Conv2d, nn.BatchNorm2d]

    swapped = simple_cnn(bn_first=True)
    for name in BLOCKS[:-1]:
        assert _types(swapped.get_submodule(name)) == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert _types(swapped.conv5) == [nn.Conv2d, nn.BatchNorm2d]


def test_no_batchnorm_when_bn_false():
    model = simple_cnn(bn=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert _types(model.conv1) == [nn.Conv2d, nn.ReLU]
    assert _types(model.conv5) == [nn.Conv2d]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_parameter_count_by_hand():
    # conv: nf*ni*k*k weights + nf biases (the book keeps the bias); BatchNorm: weight + bias = 2*nf
    conv1 = 8 * 1 * 5 * 5 + 8  # 208
    conv2 = 16 * 8 * 3 * 3 + 16  # 1168
    conv3 = 32 * 16 * 3 * 3 + 32  # 4640
    conv4 = 64 * 32 * 3 * 3 + 64  # 18496
    conv5 = 10 * 64 * 3 * 3 + 10  # 5770
    bns = 2 * (8 + 16 + 32 + 64 + 10)  # 260
    assert conv1 + conv2 + conv3 + conv4 + conv5 + bns == 30542
    model = simple_cnn()
    assert sum(p.numel() for p in model.parameters()) == 30542
    no_bn = simple_cnn(bn=False)
    assert sum(p.numel() for p in no_bn.parameters()) == 30542 - bns


def test_custom_channels_and_rgb():
    model = simple_cnn(channels=(4, 8), n_classes=3, in_channels=3)
    assert [n for n, _ in model.named_children()] == ["conv1", "conv2", "conv3", "flatten"]
    # 12 -> 6 -> 3 -> 2: this model needs a smaller image to end on a 1x1 grid
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_conv_block_matches_book():
    block = conv_block(1, 8, ks=5)
    conv = block.conv
    assert conv.stride == (2, 2) and conv.padding == (2, 2) and conv.bias is not None
    assert block(torch.randn(1, 1, 28, 28)).shape == (1, 8, 14, 14)
    assert _types(conv_block(3, 4, act=False, bn=False)) == [nn.Conv2d]
    assert conv_block(3, 4, stride=1)(torch.randn(1, 3, 9, 9)).shape == (1, 4, 9, 9)


def test_even_kernel_shifts_the_grid():
    # padding ks//2 = 2 is one more than a 4-wide kernel needs on one side: 28 -> 15, not 14
    out = simple_cnn(first_kernel=4).conv1(torch.randn(1, 1, 28, 28))
    assert out.shape[-1] == 15


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"channels": ()}, "empty"),
        ({"channels": (8, 0)}, "channels[1]"),
        ({"channels": (8, -3)}, "-3"),
        ({"n_classes": 0}, "n_classes"),
        ({"in_channels": -1}, "-1"),
        ({"first_kernel": 0}, "first_kernel"),
        ({"channels": (8, 2.5)}, "2.5"),
        ({"in_channels": True}, "True"),
    ],
)
def test_simple_cnn_bad_arguments(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        simple_cnn(**kwargs)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize(("kwargs", "needle"), [({"ks": 0}, "ks"), ({"stride": -2}, "-2"), ({"nf": 0}, "nf")])
def test_conv_block_bad_arguments(kwargs, needle):
    args = {"ni": 1, "nf": 8, **kwargs}
    with pytest.raises(ConfigError, match=needle):
        conv_block(**args)
