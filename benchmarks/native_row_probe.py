"""Would a native kernel cut a row's cost? One C loop against the eager ops it would replace (CPU, needs gcc).

    python benchmarks/native_row_probe.py

A recorded row's hooks spend part of their time in `compute.write_sums` (a sum and a dot product) and
`compute.bin_positions` (an add and a clamp) and in the cast of the positions into the row's int16 index
buffer: four or five passes over each output. This script compiles one C loop that does all of it in one
pass (the sums in 16 float lanes, combined in double; the positions clamped as `bin_positions` clamps them,
NaN to the underflow bin), with `-O3 -march=native` and with `-O3` alone (x86-64's baseline, what a wheel
built for every machine gets), loads it with ctypes and times it against the eager ops on outputs of the
sizes the book model's rows see (64 items: 100,352 / 50,176 / 32,768 values; 512 items: 802,816), after a
ReLU. It checks that the bin indices are identical and prints the sums beside torch's.
A probe for a design decision, not a code path: convscope's statistics do not use it
(docs/measurements.md#stats-row-cost).
Last line: `native_row_probe native_speedup=<eager / -march=native, at 100,352 values> baseline_speedup=<..>`.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _common import per_call_us

from convscope.stats.compute import bin_positions

SOURCE = r"""
#include <stdint.h>
#define LANES 16
void rowpass(const float *x, int64_t n, float shift, float scale, float top, int16_t *idx,
             float *sum_out, float *sumsq_out) {
    float s[LANES] = {0}, ss[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        for (int j = 0; j < LANES; j++) {
            float v = x[i + j];
            s[j] += v;
            ss[j] += v * v;
            float y = shift + scale * v;
            y = y >= 0.0f ? y : 0.0f;  /* NaN fails the test: the underflow bin */
            y = y <= top ? y : top;
            idx[i + j] = (int16_t)y;
        }
    }
    double sum = 0, sumsq = 0;
    for (; i < n; i++) {
        float v = x[i], y = shift + scale * v;
        sum += v;
        sumsq += (double)v * v;
        y = y >= 0.0f ? y : 0.0f;
        y = y <= top ? y : top;
        idx[i] = (int16_t)y;
    }
    for (int j = 0; j < LANES; j++) { sum += s[j]; sumsq += ss[j]; }
    *sum_out = (float)sum;
    *sumsq_out = (float)sumsq;
}
"""
BINS, LO, HI = 200, 0.0, 10.0  # the default fine bins after a ReLU
# the book model's conv1, conv2 and conv3 outputs in a row of 64 items, and conv1's at 512 (sample=None)
SIZES = (64 * 8 * 14 * 14, 64 * 16 * 7 * 7, 64 * 32 * 4 * 4, 512 * 8 * 14 * 14)


def build(folder: Path, flags: list[str]) -> ctypes.CDLL:
    src, lib = folder / "rowpass.c", folder / f"rowpass{len(flags)}.so"
    src.write_text(SOURCE)
    subprocess.run(["gcc", *flags, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.rowpass.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return dll


def measure(n: int, libs: dict[str, ctypes.CDLL], gen: torch.Generator) -> dict[str, float]:
    """Eager seconds over each build's seconds for one output of n values; prints the line for it."""
    scale = BINS / (HI - LO)
    x = torch.randn(n, generator=gen).relu_() * 2
    out, sums, values = torch.empty(n, dtype=torch.int16), torch.zeros(2), torch.zeros(2)

    def eager() -> None:
        torch.sum(x, dim=0, out=values[0])
        torch.dot(x, x, out=values[1])
        out.copy_(bin_positions(x, BINS, LO, HI))

    eager()
    want = out.clone()
    eager_us = per_call_us(eager, 300, rounds=3)  # the best of three rounds: the machine is shared
    line, speedup = f"{n:>8} values: eager {eager_us:7.1f} us", {}
    for name, lib in libs.items():
        def native(lib: ctypes.CDLL = lib) -> None:
            lib.rowpass(x.data_ptr(), n, 1.0 - LO * scale, scale, BINS + 1.0, out.data_ptr(), sums.data_ptr(),
                        sums.data_ptr() + 4)

        native()
        if not torch.equal(out, want):
            sys.exit(f"{name}: bin indices differ from the eager ones at {n} values")
        us = per_call_us(native, 300, rounds=3)
        speedup[name] = eager_us / us
        line += f"   {name} {us:7.1f} us ({speedup[name]:.1f}x)"
    exact = x.double()
    print(line + f"   sum {values[0].item():.7g} / {sums[0].item():.7g} / float64 {exact.sum().item():.7g}, "
          f"sum of squares {values[1].item():.7g} / {sums[1].item():.7g} / float64 {exact.square().sum().item():.7g}",
          flush=True)
    return speedup


def main() -> None:
    if shutil.which("gcc") is None:
        sys.exit("native_row_probe: needs gcc on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        libs = {"native": build(Path(tmp), ["-O3", "-march=native"]), "baseline": build(Path(tmp), ["-O3"])}
        gen = torch.Generator().manual_seed(0)
        speedups = [measure(n, libs, gen) for n in SIZES]
    print(f"native_row_probe native_speedup={speedups[0]['native']:.2f} baseline_speedup={speedups[0]['baseline']:.2f}")


if __name__ == "__main__":
    main()
