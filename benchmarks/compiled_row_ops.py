"""The statistics' element work for one layer output, eager against one fused torch.compile kernel (CPU).

    python benchmarks/compiled_row_ops.py [--values 802816]

What a recorded row does to each output, apart from the bincount and the channel maxima: its sum, its sum
of squares and its bin positions cast to bytes (stats/compute.py: `write_sums`, `bin_positions`,
`_bin_indices`), which eager PyTorch does in ~6 passes over the values. Inductor can fuse them into one loop;
this measures whether that pays on this CPU, and what the compile costs (dynamic and static shapes). The
default size is the book model's first conv output at bs 512 (512 x 8 x 14 x 14), after a ReLU.
Last line: `compiled_row_ops eager_us=<> dynamic_us=<> static_us=<> compile_s=<dynamic> <static>`.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import per_call_us

from convscope.stats.compute import _bin_indices

BINS, LO, HI = 200, 0.0, 10.0  # the default fine bins after a ReLU


def eager(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return flat.sum(), torch.dot(flat, flat), _bin_indices(flat, BINS, LO, HI)


def fused(flat: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, ...]:
    positions = (flat * scale + shift).clamp(0, BINS + 1)
    return flat.sum(), (flat * flat).sum(), positions.to(torch.int16).to(torch.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--values", type=int, default=512 * 8 * 14 * 14)
    args = ap.parse_args()
    x = torch.randn(args.values, generator=torch.Generator().manual_seed(0)).relu()
    scale, shift = torch.tensor(BINS / (HI - LO)), torch.tensor(1.0 - LO * BINS / (HI - LO))
    want = eager(x)
    results, compile_s = {"eager": per_call_us(lambda: eager(x))}, {}
    for label, dynamic in (("dynamic", True), ("static", False)):
        torch._dynamo.reset()
        compiled = torch.compile(fused, dynamic=dynamic)
        start = time.perf_counter()
        got = compiled(x, scale, shift)
        compile_s[label] = time.perf_counter() - start
        if not torch.equal(got[2], want[2]):
            raise SystemExit(f"{label}: the compiled bin indices differ from the eager ones")
        results[label] = per_call_us(lambda fn=compiled: fn(x, scale, shift))
        print(f"{label:<8} {results[label]:8.1f} us a call (eager {results['eager']:.1f}); compiled in "
              f"{compile_s[label]:.1f} s", flush=True)
    print(f"compiled_row_ops eager_us={results['eager']:.0f} dynamic_us={results['dynamic']:.0f} "
          f"static_us={results['static']:.0f} compile_s={compile_s['dynamic']:.1f} {compile_s['static']:.1f}")


if __name__ == "__main__":
    main()
