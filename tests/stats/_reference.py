"""The plain-PyTorch side of the row tests: what each training step's statistics must be, computed with our
own forward hooks and `torch.linalg.vector_norm` of the .grads at step time, and a user's hand-written loop.

Used by tests/stats/test_watch_rows.py and tests/stats/test_user_model_matrix.py."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.runs.stats_data import ActivationStatsData
from convscope.train.callback import Callback

BS, PER_EPOCH, EPOCHS = 32, 6, 2  # hand_loop's default: batch size, steps per epoch, epochs
EXACT = {"every": 1, "sample": None}  # every step, whole batches: what Reference computes
NEAR_ZERO = 0.05  # DESIGN.md's definition: near_zero = (o <= 0.05).float().mean()


class Reference:
    """Plain-PyTorch record of each step: every watched module's LAST training-mode output in the step
    (our own forward hooks) and each layer's gradient norm at step time.

    `outside_dynamo`: run our hooks outside torch.compile's tracing (as convscope's own run), so that a
    compiled model's graphs are the same with and without them."""

    def __init__(self, model: nn.Module, layers: list[str], outside_dynamo: bool = False) -> None:
        self.named = [(n, model.get_submodule(n)) for n in layers]
        self.current: dict[str, torch.Tensor] = {}
        self.outputs: list[dict[str, torch.Tensor]] = []
        self.grads: list[dict[str, object]] = []
        wrap = torch.compiler.disable if outside_dynamo else (lambda hook: hook)
        self.handles = [m.register_forward_hook(wrap(self._hook(n))) for n, m in self.named]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():
                out = output[0] if isinstance(output, tuple) else output
                self.current[name] = out.detach().float().clone()  # exact for bf16/fp16 outputs too
        return hook

    def close_step(self, divide: float = 1.0) -> None:
        """End a step: keep its outputs and the gradient norms of .grad as it is now, divided by `divide`
        (the loss scale .grad still carries, if any)."""
        self.outputs.append(self.current)
        self.current = {}
        norms: dict[str, object] = {}
        for name, m in self.named:
            params = list(m.parameters(recurse=False))
            if not params:
                continue
            if not any(p.requires_grad for p in params):
                norms[name] = "frozen"
                continue
            grads = [p.grad.flatten().double() for p in params if p.grad is not None]
            norms[name] = torch.linalg.vector_norm(torch.cat(grads)).item() / divide if grads else None
        self.grads.append(norms)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def expected_stats(output: torch.Tensor) -> dict[str, float]:
    """DESIGN.md's statistics of one output, in float64: mean, unbiased std, share of values <= 0.05, share of
    channels (dim 1) <= 0 for the whole batch; and the root mean square, to scale the tolerance of the mean."""
    o = output.double()
    flat = o.reshape(-1)
    channel_max = flat.amax().view(1) if o.ndim < 2 else o.transpose(0, 1).reshape(o.shape[1], -1).amax(dim=1)
    return {"mean": flat.mean().item(), "std": flat.std().item(), "n": flat.numel(),
            "near_zero_count": (flat <= NEAR_ZERO).sum().item(), "dead": (channel_max <= 0).double().mean().item(),
            "rms": flat.square().mean().sqrt().item()}


def check_rows(data: ActivationStatsData, ref: Reference, n_steps: int, every: int = 1) -> None:
    """One row per `every` steps, each equal to the reference's numbers for its step; NaN (and `ran` False)
    exactly where a layer did not run; finite everywhere it did; gradient norms NaN where there are none."""
    assert data.n_steps == math.ceil(n_steps / every)
    assert list(data.steps) == list(range(0, n_steps, every))
    assert data.layers == [name for name, _ in ref.named]
    for row, step in enumerate(data.steps):
        outputs, grads = ref.outputs[step], ref.grads[step]
        for j, name in enumerate(data.layers):
            at = (int(step), name)
            if name in outputs:
                e = expected_stats(outputs[name])
                assert data.ran[row, j], at
                assert np.isfinite([data.mean[row, j], data.std[row, j], data.near_zero[row, j],
                                    data.dead[row, j]]).all() and np.isfinite(data.hist[row, j]).all(), at
                # Sums of float32 values: errors of a few float32 ulps of the values' size.
                assert abs(data.mean[row, j] - e["mean"]) <= 1e-5 * e["rms"] + 1e-7, at
                assert data.std[row, j] == pytest.approx(e["std"], rel=1e-4, abs=1e-6), at
                # One value lying exactly on 0.05 may count differently (compute.py's bin edge): one in n.
                assert abs(data.near_zero[row, j] * e["n"] - e["near_zero_count"]) <= 1.01, at
                assert data.dead[row, j] == pytest.approx(e["dead"], abs=1e-9), at
            else:  # did not run in this step: NaN, and the mask says so
                assert not data.ran[row, j], at
                assert np.isnan([data.mean[row, j], data.std[row, j], data.near_zero[row, j]]).all(), at
            g = grads.get(name, "no parameters")
            if g == "frozen":
                assert data.frozen[row, j] and np.isnan(data.grad_norm[row, j]) and np.isnan(data.update_ratio[row, j])
            elif g is None or g == "no parameters":
                assert np.isnan(data.grad_norm[row, j]) and not data.frozen[row, j], at
            else:
                assert not data.frozen[row, j] and np.isfinite(data.grad_norm[row, j]), at
                assert data.grad_norm[row, j] == pytest.approx(g, rel=1e-4), at


def hand_loop(model, w, ref, data, *, accum=1, autocast=None, scaler=None, order="after_update", branch=None,
              eval_inference_train_mode=False, bs=BS, per_epoch=PER_EPOCH, epochs=EPOCHS,
              forward: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """A user's loop: train, then evaluate under no_grad and w.log between epochs. `forward` (default: the
    model) is what the training passes call, such as torch.compile(model); evaluation calls the model."""
    x, y, xt, yt = data
    forward = model if forward is None else forward
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    steps = 0
    for epoch in range(epochs):
        model.train()
        for k in range(per_epoch * accum):
            if branch is not None:
                model.use_wide = branch(steps)
            xb, yb = x[(epoch * per_epoch * accum + k) * bs:][:bs], y[(epoch * per_epoch * accum + k) * bs:][:bs]
            with torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext():
                loss = F.cross_entropy(forward(xb), yb) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if (k + 1) % accum:
                continue
            if scaler is None:
                opt.step()
                ref.close_step()
                w.step(loss)
            elif order == "after_update":
                scaler.step(opt)
                scaler.update()
                ref.close_step()
                w.step(loss)
            elif order == "between":
                scaler.step(opt)
                ref.close_step()
                w.step(loss)
                scaler.update()
            elif order == "unscale_first":
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e3)
                ref.close_step()
                w.step(loss)
                scaler.step(opt)
                scaler.update()
            else:  # "before_step": .grad still carries the loss scale
                assert scaler.get_scale() > 1  # else the test could not tell scaled from unscaled
                ref.close_step(divide=scaler.get_scale())
                w.step(loss)
                scaler.step(opt)
                scaler.update()
            opt.zero_grad()
            steps += 1
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        if eval_inference_train_mode:  # a train-mode pass without autograd is no training step either
            model.train()
            with torch.inference_mode():
                model(xt[:64])
        w.log(epoch=epoch, accuracy=acc)
    return steps


class StepCapture(Callback):
    """The Learner's side of Reference: close each step after the backward pass, before the update."""

    def __init__(self, ref_factory) -> None:
        self.ref_factory, self.ref = ref_factory, None

    def before_fit(self) -> None:
        self.ref = self.ref_factory(self.learn.model)

    def after_backward(self) -> None:
        self.ref.close_step()

    def after_fit(self) -> None:
        self.ref.remove()


def stats_layers(model: nn.Module) -> list[str]:
    """The layers ActivationStats watches by default (hooks.select_modules), for a Reference made before fit."""
    from convscope.stats.hooks import select_modules

    return [name for name, _ in select_modules(model)]


def hooks_left(model: nn.Module) -> list[str]:
    """Every hook still registered on `model`'s modules or parameters, read from torch's own hook dicts."""
    module_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    left = [f"{name or 'model'}.{d}" for name, m in model.named_modules() for d in module_dicts if getattr(m, d)]
    for name, p in model.named_parameters():
        for d in ("_backward_hooks", "_post_accumulate_grad_hooks"):
            if getattr(p, d, None):
                left.append(f"{name}.{d}")
    return left
