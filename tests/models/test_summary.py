"""summary(): shapes, parameters, MACs and receptive fields, checked by hand and empirically."""

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from convscope.errors import ConfigError
from convscope.models import print_summary, simple_cnn, summary

CONVS = ["conv1.conv", "conv2.conv", "conv3.conv", "conv4.conv", "conv5.conv"]


def test_simple_cnn_rows_and_shapes():
    s = summary(simple_cnn(), (1, 28, 28))
    shapes = [(8, 14, 14), (16, 7, 7), (32, 4, 4), (64, 2, 2), (10, 1, 1)]
    assert [s.row(n).output_shape for n in CONVS] == shapes
    assert s.output_shape == (10,)
    assert s.rows[-1].name == "flatten"
    assert s.row("conv1.bn").type == "BatchNorm2d"


def test_receptive_field_by_hand():
    # r_out = r_in + (k - 1) * j_in, j_out = j_in * stride; the input pixel is r=1, j=1
    # conv1 k=5 s=2: r = 1 + 4*1 = 5,  j = 2
    # conv2 k=3 s=2: r = 5 + 2*2 = 9,  j = 4
    # conv3 k=3 s=2: r = 9 + 2*4 = 17, j = 8
    # conv4 k=3 s=2: r = 17 + 2*8 = 33, j = 16
    # conv5 k=3 s=2: r = 33 + 2*16 = 65, j = 32
    s = summary(simple_cnn(), (1, 28, 28))
    assert [s.row(n).receptive_field for n in CONVS] == [(5, 5), (9, 9), (17, 17), (33, 33), (65, 65)]
    assert [s.row(n).jump for n in CONVS] == [(2, 2), (4, 4), (8, 8), (16, 16), (32, 32)]
    # elementwise layers pass the field through; Flatten ends the spatial chain
    assert s.row("conv3.act").receptive_field == (17, 17)
    assert s.row("conv3.bn").receptive_field == (17, 17)
    assert s.row("flatten").receptive_field is None
    assert s.receptive_field == (65, 65)


def _ones_model(model: nn.Module) -> nn.Module:
    """All weights 1, biases 0: every path adds a positive gradient, so no cancellation hides a pixel."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 1.0)
    return model


def _empirical_rf(model: nn.Module, size: int, in_ch: int = 1) -> tuple[int, int]:
    """Rows and columns of the input whose gradient is nonzero for one interior output position."""
    x = torch.ones(1, in_ch, size, size, requires_grad=True)  # positive, so ReLUs pass gradients
    out = model(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    support = x.grad[0].abs().sum(0) > 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_receptive_field_matches_gradient_support(depth):
    # 128 px keeps the centre output's field (at most 65 px) away from the borders, so padding cannot clip it
    model = _ones_model(simple_cnn(bn=False))[:depth]
    formula = summary(model, (1, 128, 128)).receptive_field
    assert _empirical_rf(model, 128) == formula


def test_receptive_field_dilation_and_pooling_matches_gradient():
    model = _ones_model(
        nn.Sequential(
            nn.Conv2d(1, 2, 3, dilation=2),  # k_eff = 5: r = 1 + 4*1 = 5, j = 1
            nn.AvgPool2d(2),  # r = 5 + 1*1 = 6, j = 2
            nn.Conv2d(2, 2, (3, 1)),  # r = 6 + 2*2 = 10 (rows), 6 (cols), j = 2
        )
    )
    s = summary(model, (1, 40, 40))
    assert s.receptive_field == (10, 6)
    assert s.rows[-1].jump == (2, 2)
    assert _empirical_rf(model, 40) == (10, 6)


def test_receptive_field_conv1d_and_global_pool():
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.Conv1d(4, 4, 3), nn.AdaptiveAvgPool1d(1)
    )
    s = summary(model, (2, 16))  # 16 -> 8 -> 6 -> 1
    # conv k3 s2: r = 3, j = 2; conv k3 s1: r = 3 + 2*2 = 7; global pool k = ceil(6/1) = 6: r = 7 + 5*2 = 17
    assert [r.receptive_field for r in s.rows] == [(3,), (7,), (17,)]


def test_residual_branch_takes_the_larger_field():
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 1, 3, padding=1)
            self.b = nn.Conv2d(1, 1, 3, padding=1)
            self.c = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x + self.b(self.a(x)))

    s = summary(Res(), (1, 16, 16))
    assert [r.receptive_field for r in s.rows] == [(3, 3), (5, 5), (7, 7)]
    assert _empirical_rf(_ones_model(Res()), 16) == (7, 7)


def test_conv_macs_by_hand():
    s = summary(simple_cnn(), (1, 28, 28))
    # out_h * out_w * out_c * (in_c * kh * kw)
    assert s.row("conv1.conv").macs == 14 * 14 * 8 * (1 * 5 * 5)  # 39,200
    assert s.row("conv2.conv").macs == 7 * 7 * 16 * (8 * 3 * 3)  # 56,448
    assert s.row("conv5.conv").macs == 1 * 1 * 10 * (64 * 3 * 3)  # 5,760
    assert s.row("conv1.bn").macs == 0 and s.row("conv1.act").macs == 0
    # the book's point: 25 pixels in per position for 8 channels out
    assert (s.row("conv1.conv").inputs_per_position, s.row("conv1.conv").out_channels) == (25, 8)
    # doubling the filters as the grid shrinks 4x keeps compute per layer within a small factor
    middle = [s.row(n).macs for n in CONVS[1:4]]
    assert max(middle) / min(middle) < 1.5


def test_grouped_conv_macs():
    s = summary(nn.Conv2d(8, 16, 3, padding=1, groups=4), (8, 5, 5))
    assert s.rows[0].macs == 5 * 5 * 16 * (8 // 4 * 3 * 3)
    assert s.rows[0].inputs_per_position == 18
    assert s.rows[0].name == "" and s.rows[0].label == "(model)"


def test_totals_are_sums_of_rows():
    model = simple_cnn()
    s = summary(model, (1, 28, 28))
    assert s.total_params == sum(r.params for r in s.rows) == 30542
    assert s.total_params == sum(p.numel() for p in model.parameters())
    assert s.total_macs == sum(r.macs for r in s.rows) == 39200 + 56448 + 73728 + 73728 + 5760
    assert s.row("conv1.conv").params == 8 * 1 * 5 * 5 + 8
    assert s.row("conv1.bn").params == 2 * 8


def test_trainable_counts_frozen_parameters():
    model = simple_cnn()
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    s = summary(model, (1, 28, 28))
    assert s.total_params - s.trainable_params == 208 + 16


def test_mlp_summary():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    s = summary(model, (1, 28, 28))
    assert [r.output_shape for r in s.rows] == [(784,), (100,), (100,), (10,)]
    assert s.total_macs == 784 * 100 + 100 * 10
    assert s.total_params == 784 * 100 + 100 + 100 * 10 + 10
    assert s.rows[1].inputs_per_position == 784 and s.rows[1].out_channels == 100
    assert all(r.receptive_field is None for r in s.rows)
    flat = summary(nn.Sequential(nn.Linear(5, 3)), (5,))
    assert flat.total_macs == 15 and flat.receptive_field is None


def test_reused_module_and_tied_weights_count_once():
    shared = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = shared
            self.head = nn.Linear(4, 4)
            self.head.weight = shared.weight  # tied: the weight counts once, the bias is the head's own

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.shared(self.shared(x)))

    model = Twice()
    s = summary(model, (4,))
    assert [(r.name, r.call) for r in s.rows] == [("shared", 1), ("shared", 2), ("head", 1)]
    assert [r.params for r in s.rows] == [20, 0, 4]
    assert s.total_params == sum(p.numel() for p in model.parameters()) == 24
    assert s.total_macs == 3 * 16  # compute is paid on every call
    assert s.row("shared", call=2).label == "shared #2"


def test_unused_modules_and_own_parameters_are_counted():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))  # owned by a module that also has children
            self.body = nn.Sequential(nn.Linear(3, 3))
            self.spare = nn.Linear(3, 2)  # never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) * self.scale

    model = Odd()
    s = summary(model, (3,))
    assert s.total_params == sum(p.numel() for p in model.parameters()) == 3 + 12 + 8
    assert s.row("", call=1).params == 3
    unused = s.row("spare", call=0)
    assert unused.params == 8 and unused.output_shape is None and "unused" in unused.label


def test_modes_and_state_are_restored():
    model = simple_cnn()
    model.train()
    model.conv2.bn.eval()  # a frozen BN must stay frozen
    before = model.conv1.bn.running_mean.clone()
    summary(model, (1, 28, 28))
    assert model.training and model.conv1.training and not model.conv2.bn.training
    assert torch.equal(model.conv1.bn.running_mean, before)
    assert not model.conv1.conv._forward_hooks and not model.conv1.conv._forward_pre_hooks


def test_input_too_small_names_layer_and_size():
    model = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.Conv2d(4, 4, 5))
    with pytest.raises(ConfigError) as info:
        summary(model, (1, 6, 6))  # 6 -> 2 after the first conv; the second needs 5
    msg = str(info.value)
    assert "too small" in msg and "layer '2'" in msg and "(1, 6, 6)" in msg
    assert "2x2 grid" in msg and "at least 5x5" in msg
    assert "\n" not in msg


def test_wrong_channels_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\(3, 28, 28\).*conv1\.conv"):
        summary(simple_cnn(), (3, 28, 28))


@pytest.mark.parametrize("bad", [(), (1, 0, 28), (1, -28, 28), (1.5, 28), "1x28x28", None])
def test_bad_input_shape(bad):
    with pytest.raises(ConfigError, match="input_shape") as info:
        summary(simple_cnn(), bad)
    assert repr(bad) in str(info.value)


def test_text_rendering_and_dict():
    s = summary(simple_cnn(), (1, 28, 28))
    text = str(s)
    for needle in ["Layer", "In/pos", "MACs", "RF", "conv1.conv", "39,200", "30,542", "248,864"]:
        assert needle in text
    d = json.loads(json.dumps(s.to_dict()))
    assert d["total_params"] == 30542 and d["receptive_field"] == [65, 65]
    assert d["rows"][0]["output_shape"] == [8, 14, 14]
    assert len(d["rows"]) == len(s) == 15


def test_notes_flag_a_3x3_first_layer():
    s = summary(simple_cnn(first_kernel=3), (1, 28, 28))
    notes = s.notes()
    assert any("conv1.conv" in n and "9 inputs" in n and "8 channels" in n for n in notes)
    assert not any("reshuffle" in n for n in summary(simple_cnn(), (1, 28, 28)).notes())


def test_print_summary_uses_rich():
    buf = io.StringIO()
    s = print_summary(simple_cnn(), (1, 28, 28), console=Console(file=buf, width=140))
    out = buf.getvalue()
    assert "conv5.bn" in out and "30,542" in out
    assert s.total_params == 30542


def test_transposed_conv_macs_and_end_of_field():
    s = summary(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ConvTranspose2d(4, 2, 2, stride=2)), (1, 6, 6))
    up = s.rows[1]
    assert up.output_shape == (2, 8, 8)
    assert up.macs == 4 * 4 * 4 * (2 * 2 * 2)  # in_h * in_w * in_c * (out_c * kh * kw)
    assert up.receptive_field is None and up.inputs_per_position is None
    assert s.receptive_field == (3, 3)
