"""BatchNorm over the global batch of all ranks.

With plain BatchNorm under DDP each rank normalises by its own shard's statistics, so the activations
(and the statistics convscope records) differ from a one-process run on the same global batch.
`torch.nn.SyncBatchNorm` fixes that, but only on GPUs; `CrossRankBatchNorm2d` does the same on any
device by all-reducing each channel's count, sum and sum of squares (in float64, so that E[x^2] - E[x]^2
stays accurate). `_AllReduceSum`'s backward pass all-reduces the gradient of those sums: each rank's
loss depends on every rank's inputs through them, which is exactly what the global batch's gradient needs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x; dL/dx = sum over ranks of dL_r/dy (every rank's loss uses y)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics span every rank's batch (same state_dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = (0, 2, 3)
        local = torch.cat([
            x.sum(dims, dtype=torch.float64),
            x.square().sum(dims, dtype=torch.float64),
            torch.full((1,), x.numel() // c, dtype=torch.float64, device=x.device),
        ])
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean.square()).clamp_min(0)  # biased: what normalisation uses
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(1, c, 1, 1)) * scale.view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d of `model` normalise over all ranks (in place; names and weights kept).

    CUDA: torch's SyncBatchNorm (fused kernels). Elsewhere: `CrossRankBatchNorm2d`.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                replacement = CrossRankBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                                   child.track_running_stats, device=device)
                replacement.load_state_dict(child.state_dict())
                replacement.train(child.training)
                setattr(parent, name, replacement)
    return model
