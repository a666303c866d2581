"""What an integration's run should hold, read independently of convscope: each training step's layer
outputs (forward hooks of our own) and gradient norms (torch.linalg.vector_norm of the .grads before the
optimizer step); and the check of a run's rows against them. Shared by the Lightning and fastai tests,
whose framework callbacks only say when a fit starts, when a step's gradients are final and when it ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ._edges import assert_near_zero_share


class StepRecord:
    def __init__(self) -> None:
        self.outputs: list[dict[str, torch.Tensor]] = []
        self.norms: list[dict[str, float]] = []
        self.current: dict[str, torch.Tensor] = {}
        self.handles: list = []

    def attach(self, model: nn.Module, layers: list[str]) -> None:
        self.layers = layers

        def hook(name):
            def record(module, inputs, output):
                if module.training and torch.is_grad_enabled():  # the training passes only
                    self.current[name] = output.detach().double().clone()
            return record
        self.handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layers]

    def end_step(self, model: nn.Module) -> None:
        """Call where the step's gradients are final and the optimizer has not run yet."""
        self.outputs.append(self.current)
        self.current = {}
        norms = {}
        for name in self.layers:
            params = list(model.get_submodule(name).parameters(recurse=False))
            if params:
                norms[name] = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()
        self.norms.append(norms)

    def detach(self) -> None:
        for h in self.handles:
            h.remove()


def check_rows(data, ref: StepRecord, n_steps: int) -> None:
    """A run recorded at every step, unsampled: each row's mean, std, near-zero share and gradient norm as
    `ref` saw them (NaN gradient norms for the layers without parameters)."""
    assert list(data.steps) == list(range(n_steps)) and len(ref.outputs) == n_steps
    for row in range(n_steps):
        for j, name in enumerate(data.layers):
            o = ref.outputs[row][name]
            assert data.ran[row, j]
            assert data.mean[row, j] == pytest.approx(o.mean().item(), rel=1e-4, abs=1e-5), (row, name)
            assert data.std[row, j] == pytest.approx(o.std().item(), rel=1e-4, abs=1e-5), (row, name)
            assert_near_zero_share(data.near_zero[row, j], o, (row, name))
            if name in ref.norms[row]:
                assert data.grad_norm[row, j] == pytest.approx(ref.norms[row][name], rel=1e-4), (row, name)
            else:
                assert np.isnan(data.grad_norm[row, j])
