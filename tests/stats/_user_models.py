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
