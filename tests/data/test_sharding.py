"""DeviceBatches under torch.distributed: ranks' shards against the one-process batches they must equal."""

from __future__ import annotations

import pytest
import torch

from convscope.data.batches import DeviceBatches
from convscope.errors import ConfigError


@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_make_up_the_one_process_global_batches(world):
    x = torch.arange(1000).float().view(-1, 1)
    y = torch.arange(1000)
    single = DeviceBatches(x, y, 16 * world, shuffle=True, drop_last=True, seed=4)
    ranks = [DeviceBatches(x, y, 16, shuffle=True, drop_last=True, seed=4, rank=r, world_size=world)
             for r in range(world)]
    assert all(len(r) == len(single) == 1000 // (16 * world) for r in ranks)
    for _epoch in range(2):  # the order is redrawn each epoch, identically on every rank
        for (xs, ys), *parts in zip(single, *ranks, strict=True):
            assert torch.equal(torch.cat([p[1] for p in parts]), ys)  # rank r holds the r-th slice
            assert torch.equal(torch.cat([p[0] for p in parts]), xs)


@pytest.mark.parametrize("world, n", [(2, 1000), (3, 1000), (4, 10)])
def test_validation_shards_cover_every_item_once(world, n):
    x, y = torch.arange(n).float().view(-1, 1), torch.arange(n)
    seen = torch.cat([yb for r in range(world) for _, yb in DeviceBatches(x, y, 64, rank=r, world_size=world)])
    assert torch.equal(seen, y)


def test_an_impossible_rank_or_a_global_batch_larger_than_the_data_is_refused():
    x, y = torch.zeros(100, 1), torch.zeros(100, dtype=torch.long)
    with pytest.raises(ConfigError, match="impossible"):
        DeviceBatches(x, y, 10, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="60 x 2 processes is larger than the dataset"):
        DeviceBatches(x, y, 60, drop_last=True, world_size=2)
