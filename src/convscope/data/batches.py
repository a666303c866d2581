"""Mini-batches from tensors that already sit on the training device.

MNIST is 47 MB as bytes and 188 MB as float32: it fits on any device, so the whole dataset is converted
and normalised once, and a batch is a single gather (`x[idx]`) with no per-batch decoding, no worker
processes and no host-to-device copy. Data that does not fit goes through a standard
`torch.utils.data.DataLoader` instead; the Learner accepts either: what it needs is `Batches`, and what
an exact mid-epoch resume needs on top is `ResumableBatches` (a DataLoader replays the epoch instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from convscope.config import check_whole_number, is_whole_number
from convscope.errors import ConfigError


@runtime_checkable
class Batches(Protocol):
    """What a Learner trains and validates on: an iterable of (inputs, targets) batches whose length is
    the number of batches per epoch. A `torch.utils.data.DataLoader` is one; `DeviceBatches` is another."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


@runtime_checkable
class ResumableBatches(Batches, Protocol):
    """Batches whose order can be saved in a checkpoint and continued mid-epoch, exactly (DeviceBatches)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The order's state: enough to replay the current epoch and to draw the next ones."""
        ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put back exactly what `state_dict` returned."""
        ...

    def resume_epoch(self, state: dict[str, torch.Tensor], next_batch: int) -> None:
        """Make the next iteration continue the epoch saved in `state` at batch `next_batch`, yielding
        batches next_batch, next_batch + 1, ... of that epoch's order."""
        ...


def check_batches(data: Any, what: str) -> None:
    """Raise ConfigError unless `data` can be trained on. A tensor or a string has a length and iterates,
    but over rows or characters, not batches: refused too."""
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Batches):
        raise ConfigError(f"{what} must be batches of (inputs, targets) with a length, such as a "
                          f"torch.utils.data.DataLoader or convscope.data.batches.DeviceBatches; "
                          f"got {type(data).__name__}")


def normalize_images(images: torch.Tensor, mean: float | None = None, std: float | None = None,
                     device: str | torch.device | None = None) -> tuple[torch.Tensor, float, float]:
    """uint8 images [N,H,W] or [N,C,H,W] -> float32 [N,C,H,W] scaled to [0,1] then standardised.

    `mean`/`std` default to the statistics of `images` (pass the training set's for the test set).
    """
    x = images.to(device) if device is not None else images
    if x.ndim == 3:
        x = x.unsqueeze(1)
    x = x.float().div_(255)
    if mean is None or std is None:
        mean, std = float(x.mean()), float(x.std())
    return x.sub_(mean).div_(std), mean, std


class DeviceBatches:
    """Iterate over `(x[idx], y[idx])` batches of whole tensors, reshuffled each epoch when `shuffle`.

    The order is drawn from a `torch.Generator` seeded with `seed`, so a run's data order is
    reproducible and can be restored (`state_dict`). `drop_last` drops a final short batch (default for
    training, where a tiny last batch gives BatchNorm a noisy estimate).

    Under torch.distributed (`world_size` > 1) every rank draws the same order (same seed) and takes its
    part of it: with `drop_last` (training) global batch i is items [i*G, (i+1)*G) of the epoch's order,
    G = bs * world_size, and rank r gets the r-th `bs` of them, so the global batches are exactly those of
    a one-process run with batch size G. Without `drop_last` (validation) rank r gets the r-th contiguous
    slice of the order, so every item is seen once over all ranks.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1, shift: int = 0) -> None:
        if len(x) != len(y):
            raise ConfigError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        check_whole_number("batch size", bs)
        if not (is_whole_number(world_size) and is_whole_number(rank, 0) and rank < world_size):
            raise ConfigError(f"rank {rank!r} of world size {world_size!r} is impossible")
        if drop_last and bs * world_size > len(x):
            what = f"batch size {bs}" + (f" x {world_size} processes" if world_size > 1 else "")
            raise ConfigError(f"{what} is larger than the dataset ({len(x)} items); use a smaller batch size")
        if not is_whole_number(shift, 0) or (shift and (not shuffle or 2 * shift >= min(x.shape[-2:]))):
            raise ConfigError(f"shift {shift!r} needs shuffled images larger than 2 x shift pixels")
        if shift and not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()  # the shifted crops gather from x's memory by its strides (see _shifted_crops)
        self.x, self.y, self.bs, self.shift = x, y, bs, shift
        self._crop_pattern: torch.Tensor | None = None
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        # The generator lives on the CPU: the permutation is cheap and this keeps orders identical
        # across devices for the same seed.
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start_state = self.generator.get_state()
        self._next_start = 0  # first batch the next iteration yields (set by resume_epoch)

    def _shard(self) -> tuple[int, int]:
        """Positions [lo, hi) of this rank's slice of the order when not dropping last (validation)."""
        n = len(self.x)
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.x) // (self.bs * self.world_size)
        lo, hi = self._shard()
        return -(-(hi - lo) // self.bs)

    def _bounds(self, i: int) -> tuple[int, int]:
        """Positions in the epoch's order of this rank's batch i."""
        if self.drop_last:
            start = i * self.bs * self.world_size + self.rank * self.bs
            return start, start + self.bs
        lo, hi = self._shard()
        return lo + i * self.bs, min(lo + (i + 1) * self.bs, hi)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        start, self._next_start = self._next_start, 0
        self.epoch_start_state = self.generator.get_state()  # what a mid-epoch checkpoint must save
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
            # Drawn right after the order from the same generator: replaying an epoch replays its shifts.
            offsets = (torch.randint(0, 2 * self.shift + 1, (n, 2), generator=self.generator).to(self.x.device)
                       if self.shift else None)
            for i in range(start, len(self)):
                a, b = self._bounds(i)
                idx = order[a:b]
                if offsets is not None:
                    xb = self._shifted_crops(idx, offsets[a:b])
                elif self.x.is_contiguous():  # the same rows as x[idx], quicker (docs/measurements.md#data-batches)
                    xb = self.x.index_select(0, idx)
                else:  # x[idx] keeps channels_last; index_select would return a contiguous batch
                    xb = self.x[idx]
                yield xb, self.y.index_select(0, idx)
        else:
            for i in range(start, len(self)):
                a, b = self._bounds(i)
                yield self.x[a:b], self.y[a:b]

    def _shifted_crops(self, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Item k of the batch is x[idx[k]] cropped to (H - 2*shift, W - 2*shift) at row/column offsets[k].

        One index_select from x's memory, at element positions built from its strides: each item's first
        element plus a fixed pattern for the crop, in x's own memory layout (contiguous or channels_last).
        That is quicker than two gathers or a 4-d advanced index (docs/measurements.md#data-batches).
        """
        x = self.x
        c, h, w = x.shape[1], x.shape[2] - 2 * self.shift, x.shape[3] - 2 * self.shift
        s_n, s_c, s_h, s_w = x.stride()
        if self._crop_pattern is None:  # element offsets of one crop, relative to its first element
            ch, r, col = (torch.arange(n, device=x.device) for n in (c, h, w))
            self._channels_last = not x.is_contiguous()
            self._crop_pattern = (r[:, None, None] * s_h + col[:, None] * s_w + ch * s_c if self._channels_last
                                  else ch[:, None, None] * s_c + r[:, None] * s_h + col * s_w)
        first = idx * s_n + offsets[:, 0] * s_h + offsets[:, 1] * s_w  # [B]
        where = (first.view(-1, 1, 1, 1) + self._crop_pattern).view(-1)
        crops = x.as_strided((x.numel(),), (1,)).index_select(0, where)  # x is dense: numel elements of memory
        if self._channels_last:
            return crops.view(len(idx), h, w, c).permute(0, 3, 1, 2)
        return crops.view(len(idx), c, h, w)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator state now, and at the start of the current epoch (to replay that epoch's order)."""
        return {"generator": self.generator.get_state(), "epoch_start": self.epoch_start_state}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put back exactly what `state_dict` saved (both generator states)."""
        self.generator.set_state(state["generator"])
        self.epoch_start_state = state.get("epoch_start", state["generator"]).clone()

    def resume_epoch(self, state: dict[str, torch.Tensor], next_batch: int) -> None:
        """Make the next iteration continue where `state` was saved: mid-epoch (`next_batch` > 0) replays
        that epoch's order from batch `next_batch`; at an epoch boundary the next epoch's order is drawn as
        it would have been."""
        self.generator.set_state(state["epoch_start"] if next_batch else state["generator"])
        self._next_start = next_batch
