"""The near-zero share an integration test expects of one layer output, as bounds rather than one number.

convscope counts values below 0.05 from fine-bin positions `1 - lo * scale + scale * x` computed in float32
(stats/compute.py), so a value within float32 rounding of the 0.05 edge (a few 1e-7 at most for the ranges
used) can land on either side of it, and whether it does depends on the CPU's and torch build's kernels
(fused multiply-add or not). Every other value must be counted exactly as `(o <= 0.05)` counts it."""

from __future__ import annotations

import torch

EDGE = 0.05
BAND = 1e-6  # wider than the rounding: a float32 position near 101 has ulp 7.6e-6, / scale 20 = 3.8e-7


def assert_near_zero_share(got: float, o: torch.Tensor, where: object = None) -> None:
    """`got` must lie between the share of values surely below the edge and the share at most at it."""
    o = o.double()
    surely = (o < EDGE - BAND).double().mean().item()
    at_most = (o <= EDGE + BAND).double().mean().item()
    assert surely - 1e-12 <= got <= at_most + 1e-12, (got, surely, at_most, where)
