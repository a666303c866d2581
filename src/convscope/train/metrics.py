"""Metrics: functions of (predictions, targets) returning a 0-d tensor on the predictions' device.

They return tensors, not floats, so that validation can sum them on the device and read the result
once per epoch instead of once per batch (each read is a host-device sync on a GPU).
"""

import torch


def accuracy(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of rows whose arg-max equals the target class."""
    return (preds.argmax(dim=-1) == targets).float().mean()

