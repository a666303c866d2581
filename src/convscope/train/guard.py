"""NonFiniteGuard: stop at the first NaN/Inf loss or gradient, naming the step and the first layer.

The check reads one boolean per step from the device; on a CPU that is free, on a GPU it is a sync, so
`check_every` lets a GPU run check every N steps (the report then names the first bad step of the N).
The layer is found by running the offending batch again with hooks that test each module's output,
in forward order, so it names where the non-finite values first appear.
"""

from __future__ import annotations

import torch

from ..errors import ConvscopeError
from .callback import Callback


class NonFiniteError(ConvscopeError):
    """Training produced NaN or Inf; `.finding` describes where (for findings.json)."""

    def __init__(self, message: str, finding: object) -> None:
        super().__init__(message)
        self.finding = finding


def first_nonfinite_layer(model: torch.nn.Module, xb: torch.Tensor) -> str | None:
    """Name of the first module (in forward order) whose output or own parameters are not finite."""
    found: list[str] = []
    handles = []

    def check(name: str):
        def hook(module, inputs, output):
            params_bad = any(not torch.isfinite(p).all() for p in module.parameters(recurse=False))
            if not found and (params_bad or (isinstance(output, torch.Tensor) and not torch.isfinite(output).all())):
                found.append(name)
        return hook

    try:
        for name, module in model.named_modules():
            if name and not list(module.children()):
                handles.append(module.register_forward_hook(check(name)))
        with torch.no_grad():
            model(xb)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


class NonFiniteGuard(Callback):
    order = 5

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients

    def after_loss(self) -> None:
        if self.learn.training and not torch.isfinite(self.learn.loss.detach()).item():
            self._stop("loss", f"{self.learn.loss.item()}")

    def after_backward(self) -> None:
        if not self.check_gradients:
            return
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all().item():
            self._stop("gradient", "NaN/Inf")

    def _stop(self, what: str, value: str) -> None:
        from ..diagnose.findings import Finding

        learn = self.learn
        step = learn.train_iter
        layer = first_nonfinite_layer(learn.model, learn.xb)
        where = f" first in layer {layer}" if layer else ""
        message = (f"training stopped: the {what} became {value} at step {step} (epoch {learn.epoch + 1}, "
                   f"batch {learn.iter + 1}){where}; the last good checkpoint is kept. Lower the learning rate, "
                   f"add BatchNorm, or check the data")
        finding = Finding("loss_not_finite" if what == "loss" else "gradient_not_finite", "high", layer,
                          (step, step), f"the {what} became {value} at step {step}{where}",
                          "lower the learning rate or warm it up (fit_one_cycle); add BatchNorm; check the input data")
        raise NonFiniteError(message, finding)
