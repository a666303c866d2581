"""The model-side faults of benchmarks/fault_bench.py, written the way a user would write them by mistake.

Each function is a `--model`-style factory (keyword arguments in_channels and n_classes, returns an
nn.Module with [N, n_classes] outputs), so a run names it in TrainConfig.model as
"fault_models:sigmoid_cnn" and `convscope rerun` rebuilds the same faulty model. None of this is library
code: the faults live beside the benchmark that injects them.
"""

from __future__ import annotations

import torch
from torch import nn

from convscope.models.cnn import simple_cnn

# MNIST's normalisation (convscope normalises with the training set's own mean and std): the inputs as a user
# who forgot to normalise feeds them, 0-255, are x * STD_255 + MEAN_255 of the normalised ones.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def sigmoid_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """The book's CNN without BatchNorm, with nn.Sigmoid where it has nn.ReLU (an old tutorial's activation)."""
    model = simple_cnn(in_channels=in_channels, n_classes=n_classes, bn=False)
    for block in model.children():
        if hasattr(block, "act"):
            block.act = nn.Sigmoid()
    return model


def zero_init_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """Every weight and bias set to zero ("start from nothing"): ReLU's gradient at 0 is 0, so nothing flows."""
    model = simple_cnn(in_channels=in_channels, n_classes=n_classes, bn=False)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def big_init_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """Every weight 10x its default initialisation (a std of 1 instead of kaiming's 1/sqrt(fan_in) scale)."""
    model = simple_cnn(in_channels=in_channels, n_classes=n_classes, bn=False)
    with torch.no_grad():
        for m in _convs(model):
            m.weight.mul_(10.0)
    return model


def negative_bias_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """Conv biases initialised to -5 ("a small negative bias keeps units sparse", with the scale wrong)."""
    model = simple_cnn(in_channels=in_channels, n_classes=n_classes, bn=False)
    with torch.no_grad():
        for m in _convs(model)[:-1]:
            m.bias.fill_(-5.0)
    return model


def softmax_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """The book's CNN with nn.Softmax as its last layer, trained with cross-entropy: softmax applied twice."""
    return nn.Sequential(simple_cnn(in_channels=in_channels, n_classes=n_classes), nn.Softmax(dim=1))


def frozen_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """Every block but the last frozen: the "freeze the pretrained body" step on a model trained from scratch.
    (Freezing every parameter fails at once in PyTorch's backward: nothing to diagnose.)"""
    model = simple_cnn(in_channels=in_channels, n_classes=n_classes)
    for block in list(model.children())[:-2]:
        block.requires_grad_(False)
    return model


def dropout_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """nn.Dropout(0.9) after every hidden block (p read as the share to keep, as in TensorFlow 1's keep_prob)."""
    model = simple_cnn(in_channels=in_channels, n_classes=n_classes)
    for block in list(model.children())[:-2]:
        block.add_module("drop", nn.Dropout(0.9))
    return model


class Raw255(nn.Module):
    """Feeds the model the pixels as 0-255 instead of the normalised values it was given (the user's data
    pipeline skipped normalisation): undoes convscope's normalisation in front of the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x * MNIST_STD + MNIST_MEAN) * 255.0)


def unnormalised_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """The book's CNN without BatchNorm on 0-255 pixels."""
    return Raw255(simple_cnn(in_channels=in_channels, n_classes=n_classes, bn=False))


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convs with BatchNorm, the input added back."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + skip)


class SmallResNet(nn.Module):
    """A torchvision-style ResNet sized for 28x28: a stride-2 stem, three stages of one basic block, average
    pool, fc."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64),
                 act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stem_act = act()
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, stride=1 if i == 0 else 2))
            c = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem_act(self.stem_bn(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def resnet(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    return SmallResNet(in_channels, n_classes)


def frozen_resnet(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    model = SmallResNet(in_channels, n_classes)
    model.requires_grad_(False)
    return model


def zero_init_resnet(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """Every conv and linear weight zero (BatchNorm's own scale left at 1)."""
    model = SmallResNet(in_channels, n_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.zero_()
    return model


def frozen_stem_resnet(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """The ResNet with its stem conv frozen: requires_grad_(False) meant for another module."""
    model = SmallResNet(in_channels, n_classes)
    model.stem.requires_grad_(False)
    return model


def dead_conv2_cnn(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """The no-BN CNN with conv2's bias at -5: that one layer's ReLU starts (and stays) dead."""
    model = simple_cnn(in_channels=in_channels, n_classes=n_classes, bn=False)
    with torch.no_grad():
        model.conv2.conv.bias.fill_(-5.0)
    return model
