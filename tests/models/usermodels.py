"""What a user writes beside them for `--model usermodels:functional` or `usermodels:resnet`: a functional-style
net (F.relu, F.max_pool2d, F.dropout, a lazy linear head) and a small ResNet for 3x32x32 images, no torchvision.

The tests copy this file into their working folder, as a user's own file; pytest does not collect it.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Functional(nn.Module):
    def __init__(self, in_channels, n_classes):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.LazyLinear(n_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.head(F.dropout(torch.flatten(x, 1), 0.25, self.training))


def functional(in_channels, n_classes):
    return Functional(in_channels, n_classes)


class Block(nn.Module):
    def __init__(self, ni, nf, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(ni, nf, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(nf)
        self.skip = nn.Sequential() if stride == 1 and ni == nf else nn.Sequential(
            nn.Conv2d(ni, nf, 1, stride, bias=False), nn.BatchNorm2d(nf))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


def resnet(in_channels, n_classes):
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_classes))
