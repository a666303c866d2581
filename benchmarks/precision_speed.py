"""bf16 autocast against float32 for the fast recipe's training step on this CPU, both in one process.

    python benchmarks/precision_speed.py [--turns 60] [--chunk 4]

Why: a CPU with AVX-512 bf16 instructions (`avx512_bf16` in /proc/cpuinfo) runs bf16 matrix products at up
to twice the float32 rate, so bf16 autocast is the first thing to try for the fast recipe there (on a CPU
without them it measured ~12x slower: docs/fast_recipe.md). The step is the fast recipe's model
(simple_cnn on the 20x20 centre crop, channels_last, Linear head; fused AdamW, bs 512, real MNIST), with
none, conv1, and conv1 + conv2 frozen, as the recipe's FreezeLayers leaves it over a run. The two contenders
start from the same weights, take the same batches and take turns of `chunk` steps (each turn alternating
which goes first), so both see the same machine state; the first 5 turns are not timed.
Last line: `precision_speed bf16_ratio=<bf16 s / float32 s, unfrozen> frozen1=<..> frozen12=<..>`.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from _common import DEFAULT_DATA

WARM_TURNS = 5
FROZEN = {"unfrozen": (), "frozen1": ("conv1",), "frozen12": ("conv1", "conv2")}


def make(frozen: tuple[str, ...]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from convscope.models.cnn import simple_cnn

    torch.manual_seed(0)
    model = simple_cnn(image_size=20, head="linear").to(memory_format=torch.channels_last)
    for name in frozen:
        getattr(model, name).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    return model, opt


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
         bf16: bool) -> None:
    if bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(xb)
        loss = F.cross_entropy(out.float(), yb)
    else:
        loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    import time

    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=4, help="steps per turn")
    args = ap.parse_args()
    os.environ.setdefault("CONVSCOPE_DATA", str(DEFAULT_DATA))
    data = load_dataset("mnist")
    x, _, _ = normalize_images(data.train_images)
    x = x[:, :, 4:24, 4:24].contiguous(memory_format=torch.channels_last)  # the recipe's centre crop
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    print(f"avx512_bf16: {'avx512_bf16' in flags}, amx_bf16: {'amx_bf16' in flags}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios = {}
    for label, frozen in FROZEN.items():
        contenders = {False: make(frozen), True: make(frozen)}
        seconds = {False: 0.0, True: 0.0}
        gen = torch.Generator().manual_seed(0)
        for turn in range(WARM_TURNS + args.turns):
            idx = [torch.randint(0, len(x), (512,), generator=gen) for _ in range(args.chunk)]
            for bf16 in (False, True) if turn % 2 else (True, False):
                model, opt = contenders[bf16]
                start = time.perf_counter()
                for i in idx:
                    step(model, opt, x[i], data.train_labels[i], bf16)
                if turn >= WARM_TURNS:
                    seconds[bf16] += time.perf_counter() - start
        n = args.turns * args.chunk
        ratios[label] = seconds[True] / seconds[False]
        print(f"{label:<9} float32 {seconds[False] / n * 1e3:6.2f} ms/step   bf16 {seconds[True] / n * 1e3:6.2f} "
              f"ms/step   bf16 / float32 {ratios[label]:.3f}", flush=True)
    print(f"precision_speed bf16_ratio={ratios['unfrozen']:.3f} frozen1={ratios['frozen1']:.3f} "
          f"frozen12={ratios['frozen12']:.3f}")


if __name__ == "__main__":
    main()
