"""The Learner callback that trains through DistributedDataParallel.

`learn.model` stays the plain model (hooks, checkpoints, summaries and the report see the same layer
names as in one process); only the training forward pass goes through the DDP wrapper, whose backward
pass all-reduces (averages) the gradients. Validation needs no wrapper: `Learner.validate` sums its
totals over the ranks itself.
"""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from convscope.dist.context import all_reduce
from convscope.train.callback import Callback

# Ranks must stop at the same step, or one would wait forever in the next all-reduce. They agree on a
# requested stop every this many steps (one tiny all-reduce and one host read each time).
_STOP_CHECK_EVERY = 8


class DistributedTrainer(Callback):
    order = -50  # wraps the model before any other callback's before_fit (noise scale registers a hook)

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def before_fit(self) -> None:
        learn = self.learn
        ids = [self.device.index] if self.device.type == "cuda" else None
        learn.train_model = DistributedDataParallel(learn.model, device_ids=ids)
        stopper = getattr(learn, "graceful_stop", None)
        if stopper is not None:
            stopper.agree = self.agree

    def agree(self, stop_here: bool) -> bool:
        """True on every rank once any rank asked to stop (checked every _STOP_CHECK_EVERY steps)."""
        if self.learn.train_iter % _STOP_CHECK_EVERY:
            return False
        flag = torch.tensor([1.0 if stop_here else 0.0], device=self.device)
        return bool(all_reduce(flag, "max").item())

    def after_fit(self) -> None:
        self.learn.train_model = None
        stopper = getattr(self.learn, "graceful_stop", None)
        if stopper is not None:
            stopper.agree = None
