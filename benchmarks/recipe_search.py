"""Search for the quickest MNIST recipe that reaches >= 99.0% with ActivationStats() left on (issue 8).

Every (candidate, seed) runs in a fresh process (benchmarks/_common.run_worker, glibc malloc pinned),
trains with convscope's Learner + ActivationStats() (default settings) and fit_one_cycle, and times the
whole fit: training steps, the statistics, and the validation at the end of each (fractional) epoch.
The optimizer is built before the clock starts (torch's first AdamW construction imports its compile
machinery, a one-off ~1.6 s that the bare book loop would pay alike); torch.compile's compile time is
inside the clock.

Search mode (default) never touches the MNIST test set: it trains on the FIRST 50,000 training images
and validates on the LAST 10,000 training images (the held-out split; normalisation statistics come from
the 50k part). Only `--final` trains on all 60,000 training images and measures on the 10,000 test images.

    export CONVSCOPE_DATA=/work/shared/data
    python benchmarks/recipe_search.py --list                       # candidate names
    python benchmarks/recipe_search.py --cost book cost_bf16 ...    # ms per training step (no accuracy)
    python benchmarks/recipe_search.py book_2ep c16_1ep --seeds 0 1 2          # held-out accuracy + seconds
    python benchmarks/recipe_search.py '{"base": "book", "bs": 256}' --seeds 0 # ad-hoc candidate as JSON
    python benchmarks/recipe_search.py book_3ep --final --book --seeds 0 1 2   # 60k -> TEST set, + bare book
    python benchmarks/recipe_search.py --book --seeds 0 1 2         # bare book loop alone (60k -> test)
    python benchmarks/recipe_search.py --book-heldout --seeds 0 1 2 # the same on the search split (seconds)

Put `--seeds` after the candidate names (it takes several values). Results: docs/fast_recipe.md.

Rows: `cand seed acc secs steps ms/step` (ms/step = fit seconds / steps, so it includes validation);
a summary per candidate gives mean/min accuracy and median seconds. `--threads` (default 2) sets
torch's intra-op threads in the workers; accuracy does not depend on it, seconds do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import bare_accuracy, bare_epoch, bare_optimizer, run_worker

BOOK_CHANNELS = (8, 16, 32, 64)

# Every field a candidate can set; a candidate lists only what differs from these defaults.
DEFAULTS: dict = dict(
    channels=BOOK_CHANNELS, first_kernel=5, bn=True, model_kwargs={},
    bs=512, epochs=5.0, lr_max=0.1, pct_start=0.25, div=25.0, div_final=1e5, moms=(0.95, 0.85, 0.95),
    wd=0.01, opt="adamw", beta2=0.99, eps=1e-5, nesterov=False, label_smoothing=0.0,
    channels_last=False, compile=False, bf16=False, valid_bs=2000, crop=28,
    first_layer="train", freeze_at=(), stem=None, shift=0,
    stats=True,  # False only in --cost probes that isolate a stats bug (never in accuracy rows)
)


def _c(**kw) -> dict:
    unknown = set(kw) - set(DEFAULTS)
    assert not unknown, unknown
    return kw


# Everything tried is listed here, so the table in docs/fast_recipe.md can be regenerated.
# Round 3 on: channels_last + Linear head + the centre 20x20 crop
CROP20 = dict(channels_last=True, model_kwargs={"head": "linear"}, crop=20)

CANDIDATES: dict[str, dict] = {
    # the book recipe itself (on convscope + stats) and shorter versions of it
    "book": _c(),
    "book_3ep": _c(epochs=3.0),
    "book_2ep": _c(epochs=2.0),
    "book_1ep": _c(epochs=1.0),
    # batch size / epochs
    "bs256_1ep": _c(bs=256, epochs=1.0),
    "bs256_1.5ep": _c(bs=256, epochs=1.5),
    "bs256_2ep": _c(bs=256, epochs=2.0),
    "bs128_1ep": _c(bs=128, epochs=1.0),
    "bs128_1ep_lr0.05": _c(bs=128, epochs=1.0, lr_max=0.05),
    "bs128_1.5ep": _c(bs=128, epochs=1.5),
    "bs64_1ep": _c(bs=64, epochs=1.0),
    "bs64_1ep_lr0.05": _c(bs=64, epochs=1.0, lr_max=0.05),
    # hyper-parameters around bs256_1.5ep
    "bs256_1.5ep_lr0.2": _c(bs=256, epochs=1.5, lr_max=0.2),
    "bs256_1.5ep_lr0.05": _c(bs=256, epochs=1.5, lr_max=0.05),
    "bs256_1.5ep_ls0.1": _c(bs=256, epochs=1.5, label_smoothing=0.1),
    "bs256_1.5ep_pct0.1": _c(bs=256, epochs=1.5, pct_start=0.1),
    "bs256_1.5ep_div5_pct0.15": _c(bs=256, epochs=1.5, div=5.0, pct_start=0.15),
    "bs256_1.5ep_wd0.1": _c(bs=256, epochs=1.5, wd=0.1),
    "bs256_1.5ep_moms0.9": _c(bs=256, epochs=1.5, moms=(0.9, 0.8, 0.9)),
    "bs256_1.5ep_beta2_0.999": _c(bs=256, epochs=1.5, beta2=0.999),
    "bs256_1.5ep_k3": _c(bs=256, epochs=1.5, first_kernel=3),
    "bs256_1.5ep_bnfirst": _c(bs=256, epochs=1.5, model_kwargs={"bn_first": True}),
    "bs256_1.5ep_sgd": _c(bs=256, epochs=1.5, opt="sgd", nesterov=True, lr_max=0.4, wd=5e-4),
    # hyper-parameters around book_2ep (bs 512)
    "book_2ep_ls0.1": _c(epochs=2.0, label_smoothing=0.1),
    "book_2ep_lr0.05": _c(epochs=2.0, lr_max=0.05),
    "book_2ep_wd0": _c(epochs=2.0, wd=0.0),
    "book_2ep_sgd": _c(epochs=2.0, opt="sgd", nesterov=True, lr_max=0.4, wd=5e-4),
    # wider models
    "c16_1ep": _c(channels=(16, 32, 64, 128), epochs=1.0),
    "c16_bs256_1ep": _c(channels=(16, 32, 64, 128), bs=256, epochs=1.0),
    "c16_bs256_1.5ep": _c(channels=(16, 32, 64, 128), bs=256, epochs=1.5),
    "c16_bs128_1ep": _c(channels=(16, 32, 64, 128), bs=128, epochs=1.0),
    "c8-16-64-128_bs256_1ep": _c(channels=(8, 16, 64, 128), bs=256, epochs=1.0),
    "c8-32-64-128_bs256_1ep": _c(channels=(8, 32, 64, 128), bs=256, epochs=1.0),
    "c12_2ep": _c(channels=(12, 24, 48, 96), epochs=2.0),
    # channels_last + a Linear head instead of the last conv (same function family on the 2x2 grid)
    "cl_lin_2ep": _c(channels_last=True, model_kwargs={"head": "linear"}, epochs=2.0),
    "cl_lin_1.75ep": _c(channels_last=True, model_kwargs={"head": "linear"}, epochs=1.75),
    "cl_lin_1.5ep": _c(channels_last=True, model_kwargs={"head": "linear"}, epochs=1.5),
    "cl_lin_2ep_ls0.1": _c(channels_last=True, model_kwargs={"head": "linear"}, epochs=2.0, label_smoothing=0.1),
    "cl_lin_1.5ep_ls0.1": _c(channels_last=True, model_kwargs={"head": "linear"}, epochs=1.5, label_smoothing=0.1),
    "cl_lin_1.5ep_bs256": _c(channels_last=True, model_kwargs={"head": "linear"}, epochs=1.5, bs=256),
    "cl_lin_2ep_c8-16-32-128": _c(channels_last=True, model_kwargs={"head": "linear"}, epochs=2.0,
                                  channels=(8, 16, 32, 128)),
    "cl_lin_2ep_c8-24-48-96": _c(channels_last=True, model_kwargs={"head": "linear"}, epochs=2.0,
                                 channels=(8, 24, 48, 96)),
    # round 3: the centre crop (crop 20: grids 10-5-3-2, ~half the work per step), then freezing early blocks
    # part-way (no backward pass through them once frozen), on top of channels_last + Linear head
    "crop20_2ep": _c(**CROP20, epochs=2.0),
    "crop24_2ep": _c(channels_last=True, model_kwargs={"head": "linear"}, crop=24, epochs=2.0),
    "crop20_2.5ep": _c(**CROP20, epochs=2.5),
    "crop20_3ep": _c(**CROP20, epochs=3.0),
    "crop18_3ep_f0.5": _c(channels_last=True, model_kwargs={"head": "linear"}, crop=18, epochs=3.0, freeze_at=(0.5,)),
    "crop20_2.5ep_pca": _c(**CROP20, epochs=2.5,
                           first_layer="pca"),
    "crop20_2.5ep_random": _c(**CROP20, epochs=2.5,
                              first_layer="random"),
    "crop20_3ep_pca": _c(**CROP20, epochs=3.0, first_layer="pca"),
    "crop20_2.5ep_f0.5": _c(**CROP20, epochs=2.5,
                            freeze_at=(0.5,)),
    "crop20_2.5ep_f0.4-0.7": _c(**CROP20, epochs=2.5,
                                freeze_at=(0.4, 0.7)),
    "crop20_3ep_f0.4-0.6": _c(**CROP20, epochs=3.0,
                              freeze_at=(0.4, 0.6)),
    "crop20_3ep_f0.5": _c(**CROP20, epochs=3.0, freeze_at=(0.5,)),
    "crop20_3ep_f0.3": _c(**CROP20, epochs=3.0, freeze_at=(0.3,)),
    "crop20_2.75ep_f0.3": _c(**CROP20, epochs=2.75,
                             freeze_at=(0.3,)),
    "crop20_3ep_f0.3-0.8": _c(**CROP20, epochs=3.0,
                              freeze_at=(0.3, 0.8)),
    "crop20_3.25ep_f0.3-0.7": _c(**CROP20, epochs=3.25,
                                 freeze_at=(0.3, 0.7)),
    "crop20_3ep_f0.3-0.8_c8-16-48-96": _c(**CROP20, epochs=3.0,
                                          freeze_at=(0.3, 0.8), channels=(8, 16, 48, 96)),
    "crop20_3ep_f0.3-0.8_c8-16-64-128": _c(**CROP20, epochs=3.0,
                                           freeze_at=(0.3, 0.8), channels=(8, 16, 64, 128)),
    "crop20_3ep_f0.5_bs1024": _c(**CROP20, epochs=3.0,
                                 freeze_at=(0.5,), bs=1024),
    "crop20_3ep_f0.5_bs1024_lr0.15": _c(**CROP20, epochs=3.0,
                                        freeze_at=(0.5,), bs=1024, lr_max=0.15),
    "crop20_3ep_f0.3-0.8_shift1": _c(**CROP20, epochs=3.0,
                                     freeze_at=(0.3, 0.8), shift=1),
    "crop20_3ep_f0.3-0.8_shift2": _c(**CROP20, epochs=3.0,
                                     freeze_at=(0.3, 0.8), shift=2),
    "crop20_3.25ep_f0.3-0.8_shift1": _c(**CROP20,
                                        epochs=3.25, freeze_at=(0.3, 0.8), shift=1),
    "crop20_3.5ep_f0.3-0.8": _c(**CROP20, epochs=3.5,
                                freeze_at=(0.3, 0.8)),
    "crop20_3.5ep_f0.25-0.6": _c(**CROP20, epochs=3.5,
                                 freeze_at=(0.25, 0.6)),
    "crop20_4ep_f0.2-0.5-0.8": _c(**CROP20, epochs=4.0,
                                  freeze_at=(0.2, 0.5, 0.8)),
    "crop20_3ep_f0.3-0.8_c8-16-48-64": _c(**CROP20, epochs=3.0,
                                          freeze_at=(0.3, 0.8), channels=(8, 16, 48, 64)),
    "crop20_3ep_f0.3-0.8_c8-16-32-96": _c(**CROP20, epochs=3.0,
                                          freeze_at=(0.3, 0.8), channels=(8, 16, 32, 96)),
    "crop20_3ep_patch4_c16-32-64": _c(channels_last=True, crop=20, epochs=3.0, stem="s2d4", channels=(16, 32, 64)),
    # per-step cost only (--cost): speed tricks
    "cost_cl_lin": _c(channels_last=True, model_kwargs={"head": "linear"}),
    "cost_crop20": _c(**CROP20),
    "cost_crop20_frozen1": _c(**CROP20, freeze_at=(0.0,)),
    "cost_bf16": _c(bf16=True),
    "cost_crop20_bf16": _c(**CROP20, bf16=True),
    "cost_crop20_frozen1_bf16": _c(**CROP20, freeze_at=(0.0,), bf16=True),
    "cost_compile": _c(compile=True),
    "cost_channels_last": _c(channels_last=True),
    "cost_nostats": _c(stats=False),
    "cost_channels_last_nostats": _c(channels_last=True, stats=False),
}


def make_opt_factory(cand: dict):
    mom0 = cand["moms"][0]
    if cand["opt"] == "adamw":
        def factory(params, lr, wd):
            return torch.optim.AdamW(list(params), lr=lr, betas=(mom0, cand["beta2"]), eps=cand["eps"],
                                     weight_decay=wd, fused=True)
    elif cand["opt"] == "sgd":
        def factory(params, lr, wd):
            return torch.optim.SGD(list(params), lr=lr, momentum=mom0, nesterov=cand["nesterov"],
                                   weight_decay=wd)
    else:
        raise ValueError(cand["opt"])
    return factory


def split(final: bool, crop: int = 28):
    """(x_train, y_train, x_valid, y_valid): 50k/10k of the training set, or 60k train / 10k test; the
    centre `crop` x `crop` pixels of every image."""
    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset

    d = load_dataset("mnist")
    if final:
        tr_i, tr_l, va_i, va_l = d.train_images, d.train_labels, d.test_images, d.test_labels
    else:  # search: the test set is never loaded into the run
        tr_i, tr_l = d.train_images[:50_000], d.train_labels[:50_000]
        va_i, va_l = d.train_images[50_000:], d.train_labels[50_000:]
    o = (28 - crop) // 2
    tr_i, va_i = tr_i[..., o : o + crop, o : o + crop], va_i[..., o : o + crop, o : o + crop]
    x, mean, std = normalize_images(tr_i)
    xv, _, _ = normalize_images(va_i, mean, std)
    return x, tr_l, xv, va_l


def prepare_first_layer(model, x, how: str) -> None:
    """Fix the first block (conv1 + its BN) before training: 'pca' = +-top principal components of the
    conv's input patches, whitened; 'random' = its random init. Frozen: no backward through block 1."""
    conv = model.conv1.conv
    if how == "pca":
        k, s = conv.kernel_size[0], conv.stride[0]
        cols = F.unfold(x[:5000], k, padding=k // 2, stride=s).transpose(1, 2).reshape(-1, k * k)
        cols = cols - cols.mean(0)
        evals, evecs = torch.linalg.eigh(cols.T @ cols / len(cols))
        n = conv.out_channels // 2
        top = evecs[:, -n:].T / (evals[-n:, None] + 1e-2).sqrt()
        with torch.no_grad():
            conv.weight.copy_(torch.cat([top, -top]).view_as(conv.weight))
            conv.bias.zero_()
    elif how != "random":
        raise ValueError(how)
    for p in model.conv1.parameters():
        p.requires_grad_(False)


def build(cand: dict, seed: int, final: bool, stop_after: int | None = None):
    from convscope.data.batches import DeviceBatches
    from convscope.models.cnn import simple_cnn
    from convscope.stats.activations import ActivationStats
    from convscope.train import Callback, CancelFitException, Learner
    from convscope.train.freeze import FreezeLayers

    x, y, xv, yv = split(final, cand["crop"] + 2 * cand["shift"])  # trained on random crops of this
    if cand["shift"]:
        sh, size = cand["shift"], cand["crop"]
        xv = xv[..., sh : sh + size, sh : sh + size]
    torch.manual_seed(seed)
    if cand["stem"]:  # trial: 4x4 pixel patches as channels, then stride-1 / stride-2 conv blocks
        from collections import OrderedDict

        from torch import nn

        from convscope.models.cnn import conv_block

        c = cand["channels"]
        model = nn.Sequential(OrderedDict([
            ("patch", nn.PixelUnshuffle(4)), ("conv1", conv_block(16, c[0], 3, stride=1)),
            ("conv2", conv_block(c[0], c[1], 3)), ("conv3", conv_block(c[1], c[2], 3)),
            ("flatten", nn.Flatten()), ("head", nn.Sequential(nn.BatchNorm1d(c[2] * 4), nn.Linear(c[2] * 4, 10)))]))
    else:
        model = simple_cnn(channels=tuple(cand["channels"]), first_kernel=cand["first_kernel"], bn=cand["bn"],
                           image_size=cand["crop"], **cand["model_kwargs"])
    if cand["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if cand["compile"]:
        model.compile()
    if cand["channels_last"]:
        x, xv = x.contiguous(memory_format=torch.channels_last), xv.contiguous(memory_format=torch.channels_last)
    # shift: every training image is the crop moved by up to `shift` pixels at random (validation: the centre)
    train = DeviceBatches(x, y, cand["bs"], shuffle=True, drop_last=True, seed=seed, shift=cand["shift"])
    valid = DeviceBatches(xv, yv, cand["valid_bs"])
    loss = F.cross_entropy
    if cand["label_smoothing"]:
        ls = cand["label_smoothing"]

        def loss(p, t):
            return F.cross_entropy(p, t, label_smoothing=ls)

    cbs: list = [ActivationStats()] if cand["stats"] else []

    class StepTimes(Callback):
        order = 100

        def before_fit(self) -> None:
            self.times, self.cpu = [], []

        def after_batch(self) -> None:
            if self.learn.training:
                self.times.append(time.perf_counter())
                self.cpu.append(time.process_time())
                if stop_after is not None and len(self.times) >= stop_after:
                    raise CancelFitException

    if cand["bf16"]:
        class Bf16(Callback):
            order = -30

            def before_batch(self) -> None:
                self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
                self.ctx.__enter__()

            def after_pred(self) -> None:
                self.ctx.__exit__(None, None, None)
                self.learn.pred = self.learn.pred.float()

        cbs.append(Bf16())
    if cand["first_layer"] != "train":
        prepare_first_layer(model, x, cand["first_layer"])
    if cand["freeze_at"]:  # block i+1 stops training once pct_train >= freeze_at[i]
        cbs.append(FreezeLayers({f"conv{i + 1}": at for i, at in enumerate(cand["freeze_at"])}))
    times = StepTimes()
    cbs.append(times)
    learn = Learner(model, train, valid, loss_func=loss, opt_func=make_opt_factory(cand), wd=cand["wd"], cbs=cbs)
    learn.create_opt()
    return learn, times


def fit(learn, cand: dict) -> tuple[float, float]:
    """Wall seconds and process CPU seconds of the whole fit (CPU seconds barely move when another job
    shares the machine, so at --threads 1 they compare candidates even on a busy machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    learn.fit_one_cycle(cand["epochs"], cand["lr_max"], pct_start=cand["pct_start"], div=cand["div"],
                        div_final=cand["div_final"], moms=tuple(cand["moms"]))
    return time.perf_counter() - start, time.process_time() - cpu


def worker_train(cand: dict, seed: int, final: bool) -> dict:
    learn, times = build(cand, seed, final)
    secs, cpu = fit(learn, cand)
    acc = learn.valid_results["accuracy"]
    return {"acc": acc, "secs": secs, "cpu": cpu, "steps": learn.train_iter,
            "valid_loss": learn.valid_results["valid_loss"]}


def worker_cost(cand: dict, steps: int) -> dict:
    cand = dict(cand, epochs=1000.0)
    learn, times = build(cand, 0, False, stop_after=steps)
    start = time.perf_counter()
    learn.fit_one_cycle(cand["epochs"], cand["lr_max"])
    t, c = times.times, times.cpu
    warm = min(10, steps // 3)
    ms = (t[-1] - t[warm]) / (len(t) - 1 - warm) * 1000
    cpu_ms = (c[-1] - c[warm]) / (len(c) - 1 - warm) * 1000
    return {"ms_step": ms, "cpu_ms_step": cpu_ms, "first_s": t[0] - start}


def worker_book(seed: int, final: bool = True) -> dict:
    """The fastai book recipe in a bare PyTorch loop: simple_cnn+BN, bs 512, AdamW, 1cycle(5, 0.1), 60k
    -> test accuracy after each epoch (validation included in the time); 50k -> held-out when not `final`."""
    from convscope.models.cnn import simple_cnn

    x, y, xv, yv = split(final)
    torch.manual_seed(seed)
    model = simple_cnn()
    epochs, bs, lr = 5, 512, 0.1
    steps = epochs * (len(x) // bs)
    opt, sched = bare_optimizer(model, lr, steps)
    gen = torch.Generator().manual_seed(seed)
    accs, when = [], []
    start = time.perf_counter()
    for _ in range(epochs):
        bare_epoch(model, opt, sched, x, y, bs, gen)
        accs.append(bare_accuracy(model, xv, yv))
        when.append(time.perf_counter() - start)
    return {"acc": accs[-1], "secs": when[-1], "steps": steps, "acc_by_epoch": accs, "secs_by_epoch": when}


def resolve(name: str) -> dict:
    if name.startswith("{"):
        spec = json.loads(name)
        base = resolve(spec.pop("base")) if "base" in spec else dict(DEFAULTS)
        return {**base, **_c(**spec)}
    return {**DEFAULTS, **CANDIDATES[name]}


def summary(name: str, rows: list[dict]) -> str:
    accs = [r["acc"] * 100 for r in rows]
    secs = [r["secs"] for r in rows]
    cpu = statistics.median(r.get("cpu", r["secs"]) for r in rows)
    return (f"SUMMARY {name:28s} n={len(rows)} acc mean {statistics.mean(accs):.2f} min {min(accs):.2f} "
            f"secs median {statistics.median(secs):.2f} cpu median {cpu:.2f} steps {rows[0]['steps']} "
            f"ms/step {statistics.median(secs) / rows[0]['steps'] * 1000:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cands", nargs="*", help="candidate names, or JSON {'base': name, field: value...}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--final", action="store_true", help="train on all 60k, measure on the TEST set")
    ap.add_argument("--book", action="store_true", help="also run the bare book loop (60k -> test set)")
    ap.add_argument("--book-heldout", action="store_true",
                    help="also run the bare book loop in search mode (50k -> held-out), for its seconds")
    ap.add_argument("--cost", action="store_true", help="only ms per training step (no accuracy)")
    ap.add_argument("--cost-steps", type=int, default=40)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--worker", choices=["train", "cost", "book"])
    ap.add_argument("--spec", default="{}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        spec = json.loads(args.spec)
        if args.worker == "train":
            out = worker_train(spec, args.seeds[0], args.final)
        elif args.worker == "cost":
            out = worker_cost(spec, args.cost_steps)
        else:
            out = worker_book(args.seeds[0], args.final)
        print(json.dumps(out))
        return
    if args.list:
        for name, spec in CANDIDATES.items():
            print(f"{name:28s} {spec}")
        return
    common = ["--threads", str(args.threads)]
    for name in args.cands:
        spec = resolve(name)
        if args.cost:
            r = run_worker(__file__, ["--worker", "cost", "--spec", json.dumps(spec), "--cost-steps",
                                      str(args.cost_steps), *common])
            print(f"COST {name:28s} ms/step {r['ms_step']:.1f} cpu-ms/step {r['cpu_ms_step']:.1f} "
                  f"first step at {r['first_s']:.2f}s", flush=True)
            continue
        rows = []
        for seed in args.seeds:
            extra = ["--final"] if args.final else []
            r = run_worker(__file__, ["--worker", "train", "--spec", json.dumps(spec), "--seeds", str(seed),
                                      *extra, *common])
            rows.append(r)
            where = "TEST" if args.final else "heldout"
            print(f"ROW {name:28s} seed {seed} {where} acc {r['acc'] * 100:.2f} secs {r['secs']:.2f} "
                  f"steps {r['steps']} ms/step {r['secs'] / r['steps'] * 1000:.1f} cpu {r['cpu']:.2f}", flush=True)
        print(summary(name, rows), flush=True)
    if args.book or args.book_heldout:
        rows = []
        for seed in args.seeds:
            where = [] if args.book_heldout else ["--final"]
            r = run_worker(__file__, ["--worker", "book", "--seeds", str(seed), *where, *common])
            rows.append(r)
            accs = " ".join(f"{a * 100:.2f}" for a in r["acc_by_epoch"])
            secs = " ".join(f"{s:.1f}" for s in r["secs_by_epoch"])
            where = "heldout" if args.book_heldout else "TEST"
            print(f"ROW bare_book seed {seed} {where} acc by epoch {accs} | secs by epoch {secs}", flush=True)
        print(summary("bare_book", rows), flush=True)


if __name__ == "__main__":
    sys.exit(main())
