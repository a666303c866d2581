"""The fastai book's chapter-13 CNN, with readable layer names.

Layer naming (every name works with `model.get_submodule`):

    simple_cnn(...)            nn.Sequential
      conv1 .. convN           one `conv_block` each (N = len(channels) + 1; the last maps to n_classes)
        conv                   nn.Conv2d
        act                    nn.ReLU        (absent in the last block, and whenever act=False)
        bn                     nn.BatchNorm2d (absent when bn=False)
      flatten                  nn.Flatten

so the first convolution is "conv1.conv", the last batch norm "conv5.bn", and a stats hook can print
names that say where in the network a number comes from instead of "0.0".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from convscope.config import check_whole_number
from convscope.errors import ConfigError

__all__ = ["conv_block", "simple_cnn"]


def conv_block(
    ni: int,
    nf: int,
    ks: int = 3,
    stride: int = 2,
    bn: bool = True,
    act: bool = True,
    bn_first: bool = False,
) -> nn.Sequential:
    """One convolution block, the book's `conv`: Conv2d, then ReLU and/or BatchNorm2d.

    Args:
        ni: input channels.
        nf: output channels (number of filters).
        ks: kernel size; padding is `ks // 2`, so an odd kernel with stride 1 keeps the grid size and
            with stride 2 halves it (rounding up). An even kernel is allowed, but `ks // 2` then pads one
            pixel more than the kernel is wide around its centre, so the output grid is one larger
            (e.g. 28 -> 15 for ks=4, stride=2) and shifted by half a pixel.
        stride: convolution stride (2 halves the grid, as in the book).
        bn: append BatchNorm2d(nf). The conv keeps its bias even then, as the book does, so parameter
            counts match the book; the bias is redundant in front of a BN but harmless.
        act: include a ReLU (the book drops it on the last layer, whose outputs are logits).
        bn_first: False gives the book's order Conv -> ReLU -> BN; True gives Conv -> BN -> ReLU.

    Returns:
        nn.Sequential with children named "conv", then "act"/"bn" in the chosen order.
    """
    for name, value in (("ni", ni), ("nf", nf), ("ks", ks), ("stride", stride)):
        check_whole_number(name, value)
    layers: list[tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(ni, nf, kernel_size=ks, stride=stride, padding=ks // 2)),
    ]
    post: list[tuple[str, nn.Module]] = []
    if act:
        post.append(("act", nn.ReLU()))
    if bn:
        post.append(("bn", nn.BatchNorm2d(nf)))
    if bn_first:
        post.reverse()
    return nn.Sequential(OrderedDict(layers + post))


def simple_cnn(
    channels: Sequence[int] = (8, 16, 32, 64),
    n_classes: int = 10,
    in_channels: int = 1,
    first_kernel: int = 5,
    bn: bool = True,
    bn_first: bool = False,
    head: str = "conv",
    image_size: int | tuple[int, int] = 28,
) -> nn.Sequential:
    """The book's `simple_cnn`: stride-2 conv blocks that double the filters as the grid halves.

    With the defaults and a 1x28x28 input the grids are 14, 7, 4, 2, 1 and the channels 8, 16, 32, 64, 10,
    so `flatten` yields [batch, n_classes] logits. The first kernel is 5x5 (not 3x3) so that each output
    position sees 25 input pixels for its 8 channels: with 3x3 it would see 9 pixels for 8 channels and
    could do little more than reshuffle them. The last block has no ReLU (its outputs are logits) but
    keeps its BatchNorm when `bn` is set, as in the book.

    Args:
        channels: filters of the hidden blocks; one block per entry, plus a final block to n_classes.
        n_classes: outputs of the last block.
        in_channels: channels of the input images (1 for MNIST, 3 for RGB).
        first_kernel: kernel size of the first block; see `conv_block` for even sizes.
        bn: use BatchNorm2d in every block.
        bn_first: block order Conv -> BN -> ReLU instead of the book's Conv -> ReLU -> BN.
        head: "conv" (the book's last stride-2 3x3 conv, then flatten) or "linear": flatten the last grid
            and a Linear layer (+ BatchNorm1d when `bn`), named `head.fc` / `head.bn`. On a 2x2 grid (28x28
            input) the book's last conv only ever multiplies real inputs with 4 of its 9 taps (the other 5
            see zero padding), so it computes the same family of functions as the Linear layer, with 5/9 of
            its weights dead; the Linear layer is also much cheaper on a CPU (docs/measurements.md#models-cnn).
        image_size: input height and width (only the "linear" head needs it, to size its Linear layer).

    Raises:
        ConfigError: empty `channels` or a non-positive size.
    """
    channels = tuple(channels)
    if not channels:
        raise ConfigError("channels must name at least one hidden layer, got an empty sequence")
    for i, c in enumerate(channels):
        check_whole_number(f"channels[{i}]", c)
    check_whole_number("n_classes", n_classes)
    check_whole_number("in_channels", in_channels)
    check_whole_number("first_kernel", first_kernel)

    sizes = (in_channels, *channels)
    blocks: list[tuple[str, nn.Module]] = []
    for i, (ni, nf) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        ks = first_kernel if i == 0 else 3
        blocks.append((f"conv{i + 1}", conv_block(ni, nf, ks=ks, bn=bn, bn_first=bn_first)))
    if head == "linear":
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        for i in range(len(channels)):
            ks = first_kernel if i == 0 else 3
            h, w = (h + 2 * (ks // 2) - ks) // 2 + 1, (w + 2 * (ks // 2) - ks) // 2 + 1
        fc = nn.Linear(channels[-1] * h * w, n_classes)
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten()), ("fc", fc)]
        if bn:
            layers.append(("bn", nn.BatchNorm1d(n_classes)))
        blocks.append(("head", nn.Sequential(OrderedDict(layers))))
        return nn.Sequential(OrderedDict(blocks))
    if head != "conv":
        raise ConfigError(f"unknown head {head!r}; choose conv or linear")
    last = conv_block(channels[-1], n_classes, ks=3, bn=bn, act=False, bn_first=bn_first)
    blocks.append((f"conv{len(channels) + 1}", last))
    blocks.append(("flatten", nn.Flatten()))
    return nn.Sequential(OrderedDict(blocks))
