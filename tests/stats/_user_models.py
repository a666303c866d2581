"""Models written the way users write them (not convscope's simple_cnn), for the row tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FunctionalNet(nn.Module):
    """Functional ReLU + max-pool + dropout + linear head: no activation module to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(torch.relu(self.c2(x)), 2)
        x = F.dropout(torch.flatten(x, 1), 0.25, self.training)
        return self.fc2(F.relu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn(self.conv(x)))


class ResNetFrozenStem(nn.Module):
    """Residual blocks after a stem whose weights are frozen (requires_grad False)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.stem_act = nn.ReLU()
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(8, 10)
        self.stem.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_act(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


class PairOut(nn.Module):
    """A leaf with its own weights that returns a tuple (output, the pre-bias product)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        product = x @ self.weight.t()
        return product + self.bias, product


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = PairOut(28 * 28, 64)
        self.act = nn.ReLU()
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.pair(x.flatten(1))
        return self.out(self.act(h))


class SharedNet(nn.Module):
    """One conv (and one ReLU) called twice per forward: shared weights."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.inp(x))
        x = self.act(self.shared(x))
        x = self.act(self.shared(x))
        return self.head(x.mean(dim=(2, 3)))


class BranchNet(nn.Module):
    """A ModuleDict whose branch 'wide' is taken only when `self.use_wide` is set (by the loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(28 * 28, 32)
        self.paths = nn.ModuleDict({"narrow": nn.Linear(32, 32), "wide": nn.Linear(32, 32)})
        self.act = nn.ReLU()
        self.out = nn.Linear(32, 10)
        self.use_wide = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x.flatten(1)))
        h = self.act(self.paths["wide" if self.use_wide else "narrow"](h))
        return self.out(h)


class ControlFlowNet(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.flatten(1))
        return F.relu(y) if y.sum() > 0 else y


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock as torchvision writes it: one in-place ReLU module called twice."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet layout (conv1/bn1/relu/maxpool, layer1..layer4 of BasicBlocks with 1x1 downsample
    branches, adaptive average pool, fc) at CIFAR size: a 3x3 stem without max-pool for 3x32x32 inputs, and
    narrow widths so a CPU test runs it in seconds. `layers=(2, 2, 2, 2), widths=(64, 128, 256, 512)` is
    resnet18 itself."""

    def __init__(self, in_channels: int = 3, n_classes: int = 10, layers: tuple[int, ...] = (1, 1, 1, 1),
                 widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()  # torchvision's 3x3/2 max-pool would leave 32x32 inputs at 1x1 too soon
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], n_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def fashion_rgb32(x: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST [N, 1, 28, 28] as a 3-channel 32x32 set: zero-padded by 2 and repeated 3 times."""
    return F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
