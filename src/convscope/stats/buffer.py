"""Where statistics go while training: small device blocks, copied to bounded host storage.

Each recorded step writes one row into a block of `block` rows that lives on the training device.
When the block is full (or at an epoch end) it is copied to the host in one transfer: one host-device
sync per `block` recorded steps instead of one per statistic per layer per step.

Memory policy: the host keeps at most `max_rows` rows. When that is reached, every other row is dropped
and the recording interval doubles, so the kept rows stay evenly spaced over the whole run, the most
recent steps are always kept, and memory stays below max_rows * layers * (6*8 + 2*4 + 2 + 4*bins) bytes
whatever the run's length.
"""

from __future__ import annotations

import numpy as np
import torch

from convscope.stats.compute import N_VALUES, finish
from convscope.stats.reduce import reduce_block

_N_FINISHED = 6  # mean, std, near_zero, dead, negative, abs_near_zero (see compute.finish)


class _SlotViews:
    """`views[slot]`: the per-layer views of one slot of a block, made by `make(slot)` the first time asked."""

    def __init__(self, make, block: int) -> None:
        self._make = make
        self._views: list = [None] * block

    def __getitem__(self, slot: int) -> list:
        views = self._views[slot]
        if views is None:
            views = self._views[slot] = self._make(slot)
        return views


class StatsBuffer:
    def __init__(self, n_layers: int, bins: int, device: torch.device, block: int = 64, max_rows: int = 2048,
                 across_ranks: bool = False):
        if max_rows < 2 or max_rows % 2:
            raise ValueError("max_rows must be an even number >= 2")
        self.n_layers, self.bins, self.block, self.max_rows = n_layers, bins, block, max_rows
        self.values = torch.zeros(block, n_layers, N_VALUES, dtype=torch.float32, device=device)
        self.sizes = np.zeros((block, n_layers, 2), dtype=np.int64)  # elements, channels: known on the host
        self.hist = torch.zeros(block, n_layers, bins, dtype=torch.int64, device=device)
        self.grads = torch.full((block, n_layers, 2), float("nan"), dtype=torch.float32, device=device)
        # Per row and layer, known on the host without a sync: whether the layer's parameters were all
        # frozen (requires_grad False) at the step; whether it ran is sizes[..., 0] > 0.
        self.frozen = np.zeros((block, n_layers), dtype=bool)
        self.block_steps: list[int] = []
        # Under torch.distributed: rows are combined over ranks before they leave the device (reduce.py),
        # which needs each layer's per-channel maxima ([block, channels], made at the layer's first row).
        self.across_ranks = across_ranks
        self.channel_max: list[torch.Tensor | None] = [None] * n_layers
        # 0-d views of every (slot, layer, column) and the histogram rows, each made once, when its slot is
        # first used: indexing per layer per step would cost as much as the statistics of a small layer, and
        # making all block * layers * 7 views up front cost ~30 ms at the start of every fit.
        # unbind() makes a row's views in one call (indexing them one by one, ~100 views a row of 14 layers,
        # cost ~0.4 ms of every recorded row inside training: docs/measurements.md#stats-row-cost).
        self.value_views = _SlotViews(lambda s: [layer.unbind(0) for layer in self.values[s].unbind(0)], block)
        self.hist_views = _SlotViews(lambda s: self.hist[s].unbind(0), block)
        self.h_steps = np.zeros(max_rows, dtype=np.int64)
        self.h_values = np.zeros((max_rows, n_layers, _N_FINISHED), dtype=np.float64)
        self.h_hist = np.zeros((max_rows, n_layers, bins), dtype=np.float32)
        self.h_grads = np.full((max_rows, n_layers, 2), np.nan, dtype=np.float32)
        self.h_ran = np.zeros((max_rows, n_layers), dtype=bool)
        self.h_frozen = np.zeros((max_rows, n_layers), dtype=bool)
        self.n_rows = 0
        self.every = 1

    def set_every(self, every: int) -> None:
        self.every = every

    def should_record(self, step: int) -> bool:
        return step % self.every == 0

    def open_row(self, step: int) -> int:
        """Start the row for `step`; returns its slot in the device block."""
        if len(self.block_steps) == self.block:
            self.flush()
        slot = len(self.block_steps)
        self.block_steps.append(step)
        self.grads[slot].fill_(float("nan"))
        # A layer that does not run in this row (a branch not taken) must not show the slot's last numbers.
        self.sizes[slot] = 0
        self.frozen[slot] = False
        if self.across_ranks:  # rows are summed over ranks: a layer that ran on another rank only adds zeros here
            self.values[slot].zero_()
            self.hist[slot].zero_()
        return slot

    def channel_max_row(self, slot: int, layer: int, channels: int) -> torch.Tensor | None:
        """Where layer `layer`'s per-channel maxima of row `slot` go (None in a single process)."""
        if not self.across_ranks:
            return None
        if self.channel_max[layer] is None:
            self.channel_max[layer] = torch.zeros(self.block, channels, device=self.values.device)
        return self.channel_max[layer][slot]

    def drop_pending(self) -> None:
        """Forget the rows not yet flushed (a failed distributed fit: the other ranks may be gone)."""
        self.block_steps = []

    def flush(self) -> None:
        """Copy the filled part of the device block to the host (the one sync point)."""
        k = len(self.block_steps)
        if k == 0:
            return
        if self.across_ranks:
            reduce_block(self.values[:k], self.hist[:k], self.sizes[:k],
                         [None if m is None else m[:k] for m in self.channel_max])
        values = np.stack(finish(self.values[:k].cpu().numpy(), self.sizes[:k]), axis=-1)
        hist = self.hist[:k].cpu().numpy().astype(np.float32)
        grads = self.grads[:k].cpu().numpy()
        ran = self.sizes[:k, :, 0] > 0
        values[~ran] = np.nan  # did not run: no statistics (the ran mask says why they are NaN)
        hist[~ran] = 0
        for j, step in enumerate(self.block_steps):
            if step % self.every:  # recorded before the interval doubled
                continue
            if self.n_rows == self.max_rows:
                self._halve()
                if step % self.every:
                    continue
            r = self.n_rows
            self.h_steps[r], self.h_values[r], self.h_hist[r], self.h_grads[r] = step, values[j], hist[j], grads[j]
            self.h_ran[r], self.h_frozen[r] = ran[j], self.frozen[j]
            self.n_rows += 1
        self.block_steps = []

    def _halve(self) -> None:
        """Keep the rows whose step is a multiple of twice the interval; double the interval."""
        self.widen(self.every * 2)

    def widen(self, every: int) -> None:
        """Record one step in `every` (a multiple of the interval) from now on, and keep only the rows so far
        whose step is a multiple of it: rows not yet flushed are filtered when they are (see flush)."""
        if every <= self.every:
            return
        assert every % self.every == 0, (every, self.every)
        self.every = every
        keep = np.flatnonzero(self.h_steps[: self.n_rows] % self.every == 0)
        for arr in (self.h_steps, self.h_values, self.h_hist, self.h_grads, self.h_ran, self.h_frozen):
            arr[: len(keep)] = arr[keep]
        self.n_rows = len(keep)

    def restore(self, steps: np.ndarray, values: np.ndarray, hist: np.ndarray, grads: np.ndarray, every: int,
                ran: np.ndarray, frozen: np.ndarray) -> None:
        """Put rows saved earlier (a resumed run) back into host storage."""
        n = len(steps)
        if n > self.max_rows:
            raise ValueError(f"{n} saved rows exceed max_rows={self.max_rows}")
        self.every = every
        self.h_steps[:n], self.h_values[:n], self.h_grads[:n] = steps, values, grads
        self.h_ran[:n], self.h_frozen[:n] = ran, frozen
        if self.h_hist.shape[-1]:
            self.h_hist[:n] = hist
        self.n_rows = n
        self.block_steps = []

    def host_nbytes(self) -> int:
        return sum(a.nbytes for a in (self.h_steps, self.h_values, self.h_hist, self.h_grads, self.h_ran,
                                      self.h_frozen))
