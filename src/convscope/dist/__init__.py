"""Multi-process training on torch.distributed (torchrun + DistributedDataParallel).

    torchrun --nproc-per-node 2 -m convscope train      # or: convscope train --nproc 2

`context`: which rank this process is and the few collectives the rest of convscope needs.
`batchnorm`: BatchNorm whose batch statistics span all ranks (torch's SyncBatchNorm is CUDA-only).
`devices`: the training device from a user's string (auto, cpu, cuda:N, mps).
(The Learner callback that trains through DistributedDataParallel is convscope.train.ddp.)
`launch`: `convscope train --nproc N` starts torchrun.
"""

from convscope.dist.context import DistInfo, all_reduce, current, init_from_env, is_main

__all__ = ["DistInfo", "all_reduce", "current", "init_from_env", "is_main"]
