"""Run under torchrun by test_distributed.py: one training step on a global batch split over the ranks.

    python -m torch.distributed.run --standalone --nproc-per-node 2 stats_worker.py OUT_DIR GLOBAL_BS

Every rank builds the book's simple_cnn from the same seed, takes its half of the first global batch
(DeviceBatches with rank/world_size), normalises with cross-rank BatchNorm, and records exact statistics
(every=1, sample=None) for one optimizer step. Rank 0 writes what the test compares with a one-process
run: the recorded statistics and the weights after the step. It also checks the dead-channel combination
on a hand-made block whose answer is known (see reduce.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from convscope.data.batches import DeviceBatches, normalize_images
from convscope.data.sources import load_dataset
from convscope.dist.batchnorm import sync_batchnorm
from convscope.dist.context import current, init_from_env, shutdown
from convscope.train.ddp import DistributedTrainer
from convscope.models.cnn import simple_cnn
from convscope.stats.activations import ActivationStats
from convscope.stats.compute import DEAD_COUNT
from convscope.stats.noise_scale import GradientNoiseScale
from convscope.stats.reduce import reduce_block
from convscope.train import Learner


def dead_block_check() -> list[float]:
    """Two layers x one row. Layer 0, 3 channels: channel 0 <= 0 on every rank (dead), channel 1 <= 0 on
    rank 0 only (alive: rank 1 sees positive values), channel 2 positive everywhere. Expected dead: 1."""
    rank = current().rank
    values = torch.zeros(1, 2, 4)
    channel_max = torch.tensor([[-1.0, 2.0 if rank == 1 else -0.5, 3.0]])
    values[0, 0, DEAD_COUNT] = float((channel_max <= 0).sum())  # what this rank alone would say
    sizes = np.array([[[30, 3], [10, 1]]])
    reduce_block(values, torch.zeros(1, 2, 0, dtype=torch.int64), sizes, [channel_max, None])
    return [float(values[0, 0, DEAD_COUNT]), float(sizes[0, 0, 0])]


def main() -> None:
    out, global_bs = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    info, device = init_from_env(torch.device("cpu"))
    data = load_dataset("mnist", root=os.environ["CONVSCOPE_TEST_DATA"])
    x, mean, std = normalize_images(data.train_images)
    bs = global_bs // info.world_size
    train = DeviceBatches(x, data.train_labels, bs, shuffle=True, drop_last=True, seed=3, rank=info.rank,
                          world_size=info.world_size)
    torch.manual_seed(0)
    model = sync_batchnorm(simple_cnn(), device)
    stats = ActivationStats(every=1, sample=None)
    learn = Learner(model, train, None, cbs=[DistributedTrainer(device), stats])
    learn.fit(1 / len(train), lr=1e-3)  # exactly one optimizer step
    dead = dead_block_check()

    # The noise scale's pair under DDP, with each rank's own BatchNorm (no sync): the small gradient is
    # each rank's own, read from DDP's buckets before the all-reduce; the big one is their average.
    train.load_state_dict({"generator": torch.Generator().manual_seed(3).get_state()})
    torch.manual_seed(0)
    gns = GradientNoiseScale(every=1)
    Learner(simple_cnn(), train, None, cbs=[DistributedTrainer(device), gns]).fit(1 / len(train), lr=1e-3)
    if info.is_main:
        d = stats.data
        np.savez(out / "ddp.npz", mean=d.mean[0], std=d.std[0], near_zero=d.near_zero[0], dead=d.dead[0],
                 negative=d.negative[0], abs_near_zero=d.abs_near_zero[0], hist_range=d.hist_range,
                 hist=d.hist[0], grad_norm=d.grad_norm[0], steps=d.steps, dead_check=np.array(dead),
                 gns=np.array([gns.g2_small[0], gns.g2_big[0], gns.b_small[0], gns.b_big[0]]),
                 **{f"w.{k}": v.numpy() for k, v in model.state_dict().items()})
    shutdown()


if __name__ == "__main__":
    main()
