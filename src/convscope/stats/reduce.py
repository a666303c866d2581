"""Combining a block of per-rank statistics rows into the statistics of the global batch.

Under torch.distributed each rank computes its rows (compute.py) on its own shard of the batch. They are
combined exactly, from sums and counts, never as averages of averages:
    sum, sum of squares, element count   summed over ranks (mean and std then follow as in one process)
    near zero  sum of the ranks' counts
    histogram  sum of the ranks' counts
    dead       a channel is dead when its largest value over *all* ranks is <= 0: the per-channel maxima
               are all-reduced with MAX (a sum of per-rank dead counts would count a channel dead on
               one rank but alive on another)
Gradient norms and update ratios need nothing: after DDP's all-reduce every rank holds the same ones.
This runs once per block of rows (buffer.py), in at most three collectives (sums, histogram counts,
channel maxima), never per step.
"""

from __future__ import annotations

import numpy as np
import torch

from convscope.dist.context import all_reduce
from convscope.stats.compute import DEAD_COUNT


def reduce_block(values: torch.Tensor, hist: torch.Tensor, sizes: np.ndarray,
                 channel_max: list[torch.Tensor | None]) -> None:
    """All-reduce the first k rows in place: `values` [k, layers, 4] float32, `hist` [k, layers, bins] int64,
    `sizes` [k, layers, 2] (elements, channels; host), `channel_max[i]` [k, channels of layer i] or None."""
    n = torch.as_tensor(sizes[:, :, 0], dtype=torch.float64, device=values.device)
    sums = values.double()
    flat = all_reduce(torch.cat([sums.flatten(), n.flatten()]))
    sums, total = flat[: sums.numel()].view_as(sums), flat[sums.numel():].view_as(n)
    if hist.numel():
        all_reduce(hist)
    present = [(i, m) for i, m in enumerate(channel_max) if m is not None]
    if present:
        maxima = all_reduce(torch.cat([m.flatten() for _, m in present]), "max")
        offset = 0
        for i, m in present:
            part = maxima[offset : offset + m.numel()].view_as(m)
            offset += m.numel()
            sums[:, i, DEAD_COUNT] = part.le(0).sum(dim=1).double()
    values.copy_(sums.float())
    sizes[:, :, 0] = total.long().cpu().numpy()
