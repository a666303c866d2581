"""Mini-batches from tensors that already sit on the training device.

MNIST is 47 MB as bytes and 188 MB as float32: it fits on any device, so the whole dataset is converted
and normalised once, and a batch is a single gather (`x[idx]`) with no per-batch decoding, no worker
processes and no host-to-device copy. Data that does not fit goes through a standard
`torch.utils.data.DataLoader` instead; the Learner accepts either.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import ConfigError


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
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(x) != len(y):
            raise ConfigError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        if not isinstance(bs, int) or bs < 1:
            raise ConfigError(f"batch size must be a whole number >= 1, got {bs!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ConfigError(f"rank {rank!r} of world size {world_size!r} is impossible")
        if drop_last and bs * world_size > len(x):
            what = f"batch size {bs}" + (f" x {world_size} processes" if world_size > 1 else "")
            raise ConfigError(f"{what} is larger than the dataset ({len(x)} items); use a smaller batch size")
        self.x, self.y, self.bs = x, y, bs
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        # The generator lives on the CPU: the permutation is cheap and this keeps orders identical
        # across devices for the same seed.
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start_state = self.generator.get_state()
        self.next_start = 0  # first batch the next iteration yields (set when resuming mid-epoch)

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
        start, self.next_start = self.next_start, 0
        self.epoch_start_state = self.generator.get_state()  # what a mid-epoch checkpoint must save
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
            for i in range(start, len(self)):
                a, b = self._bounds(i)
                idx = order[a:b]
                yield self.x[idx], self.y[idx]
        else:
            for i in range(start, len(self)):
                a, b = self._bounds(i)
                yield self.x[a:b], self.y[a:b]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator state now, and at the start of the current epoch (to replay that epoch's order)."""
        return {"generator": self.generator.get_state(), "epoch_start": self.epoch_start_state}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put back exactly what `state_dict` saved (both generator states)."""
        self.generator.set_state(state["generator"])
        self.epoch_start_state = state.get("epoch_start", state["generator"]).clone()

    def resume_epoch(self, state: dict[str, torch.Tensor], skip: int) -> None:
        """Make the next iteration continue where `state` was saved: mid-epoch (`skip` > 0) replays that
        epoch's order from batch `skip`; at an epoch boundary the next epoch's order is drawn as it would
        have been."""
        self.generator.set_state(state["epoch_start"] if skip else state["generator"])
        self.next_start = skip
