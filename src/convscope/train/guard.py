"""NonFiniteGuard: stop at the first NaN/Inf loss or gradient, naming the step and the first layer.

By default the guard keeps, on the device, a flag for each step's gradients in a window of `check_every` steps
(16), and reads the window when it is full, at every epoch end and before every checkpoint, so no checkpoint
ever holds non-finite weights; the report names the first bad step exactly. The loss is read at every step
where a read costs no sync (the CPU: `loss.item()`, one op), so a NaN/Inf loss stops the step before its
update; on a GPU, where that read would be a host sync per step, the losses wait in the window too
(`read_loss=False` does that on a CPU as well). A step then costs one or two ops: the check of all gradients,
writing into the step's flag, and the loss's read or its copy into the window. Reading the gradient flag at
every step as well cost ~100 us a step inside training on a CPU, ~0.4% of a book-model step
(docs/measurements.md#train-guard). `check_every=1` does that, and stops before the optimizer applies a bad
gradient (the weights stay finite); with the window a bad gradient's update is applied, and the run stops at
the next NaN/Inf loss or the window's read, at most `check_every - 1` steps later, naming the step where it
went bad.
The layer is found by running the offending batch again with hooks that test each module's output,
in forward order, so it names where the non-finite values first appear.

An fp16 run (`Learner(precision="fp16")`) is different: an Inf gradient there is the loss scaler's signal that
the scale is too large, and the scaler skips that step and halves the scale. That is not a failure, so the
guard does not stop on it. It stops when the scaler skips `max_skipped` steps in a row (16 by default): by
then the scale has been halved 16 times, from 65536 (torch's initial scale) down to 1, so no loss scale
gives this run finite gradients. A NaN/Inf loss stops an fp16 run as it does any other. The count of
consecutive skips starts again at 0 when a run resumes.
"""

from __future__ import annotations

import math

import torch

from convscope.config import check_whole_number
from convscope.errors import ConvscopeError
from convscope.runs.findings import Finding
from convscope.train.callback import Callback


class NonFiniteError(ConvscopeError):
    """Training produced NaN or Inf; `finding` says where and when, for the run's findings.json."""

    def __init__(self, message: str, finding: Finding) -> None:
        super().__init__(message)
        self.finding: Finding = finding


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


DEFAULT_CHECK_EVERY = 16


class NonFiniteGuard(Callback):
    order = 5

    def __init__(self, check_gradients: bool = True, check_every: int | None = None, max_skipped: int = 16,
                 read_loss: bool | None = None) -> None:
        check_whole_number("max_skipped", max_skipped, note="steps the fp16 loss scaler may skip in a row")
        self.check_gradients = check_gradients
        self.check_every = check_every  # None: DEFAULT_CHECK_EVERY on every device
        self.max_skipped = max_skipped
        # Whether the loss is read at every step even with a window: None reads it where a read costs no
        # sync (the CPU); False keeps the losses in the window too, as on a GPU.
        self.read_loss = read_loss

    def before_fit(self) -> None:
        self.every = DEFAULT_CHECK_EVERY if self.check_every is None else self.check_every
        device = self.learn.device
        # The window read every `every` steps: row 0 the steps' losses, row 1 their gradient flags (> 0: a
        # NaN/Inf); the steps themselves are kept on the host. Views of each slot are made once, since
        # indexing at every step costs as much as the check.
        self._window = torch.zeros(2, self.every, device=device)
        self._slots = [(self._window[0, k], self._window[1, k : k + 1]) for k in range(self.every)]
        self._steps: list[int] = []
        self._found = torch.zeros(1, device=device)  # every == 1: the gradient flag, read at once
        # Where a host read costs no sync (the CPU), the loss is read at every step even with a window.
        self._read_loss = device.type == "cpu" if self.read_loss is None else self.read_loss
        self._one = torch.ones(1, device=device)
        # Listed once: walking the module tree for them at every step costs more than the check itself.
        self._params = list(self.learn.model.parameters())
        self._fused: bool | None = None  # whether the fused check fits these gradients (decided at step 1)
        # fp16: a step's gradient flag is the number of steps the scaler has skipped in a row, up to this one
        # (kept on the device), and the guard stops when it reaches max_skipped; otherwise the flag is 0 or 1.
        self._scaled = self.learn.scaler is not None
        self._limit = self.max_skipped if self._scaled else 1
        self._skips = torch.zeros(1, device=device)

    def after_loss(self) -> None:
        if not self.learn.training:
            return
        loss = self.learn.loss.detach()
        window = self.every > 1
        if window and len(self._steps) == self.every:  # a read was missed (no after_batch): never overwrite a slot
            self.check_now()
        if not window or self._read_loss:
            # Read now, before backward and the optimizer step: the weights stay finite, and the layer search
            # below runs on the weights that made the bad loss. On a CPU the read costs one op, no sync.
            value = loss.item() if loss.numel() == 1 else None
            if not (math.isfinite(value) if value is not None else torch.isfinite(loss).all()):
                self.check_now()  # a gradient flagged at an earlier step of the window is the first bad step
                self._stop("loss", "NaN/Inf" if value is None else f"{value}", self.learn.train_iter)
        else:
            self._slots[len(self._steps)][0].copy_(loss.reshape(()))
        if window:
            self._steps.append(self.learn.train_iter)

    def after_backward(self) -> None:
        if not self.check_gradients:
            return
        if self._scaled:
            self._count_skips()
            return
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return
        if self.every == 1:
            self._found.zero_()
            self._flag_gradients(grads, self._found)
            if self._found.item():
                self._stop("gradient", "NaN/Inf", self.learn.train_iter)
        elif self._steps:
            self._flag_gradients(grads, self._slots[len(self._steps) - 1][1])

    def _count_skips(self) -> None:
        """fp16: count the scaler's skips in a row (its own Inf/NaN check of this step's gradients)."""
        skipped = self.learn.step_skipped
        if skipped is None:
            return
        found = skipped.reshape(1).to(self._skips)
        self._skips.mul_(found).add_(found)  # a skip adds one, a step taken resets the count to 0
        if self.every == 1:
            if self._skips.item() >= self._limit:
                self._stop_skipped(self.learn.train_iter)
        elif self._steps:
            self._slots[len(self._steps) - 1][1].copy_(self._skips)

    def _flag_gradients(self, grads: list[torch.Tensor], flag: torch.Tensor) -> None:
        """Set `flag` (1 value, zero beforehand) above 0 if any gradient holds a NaN or Inf.

        The kernel that torch's GradScaler uses for the same question checks all the tensors in one call,
        several times quicker than per-tensor norms at every step (docs/measurements.md#train-guard).
        It also multiplies each gradient by its scale argument, 1 here: x * 1 is x exactly (NaN
        stays NaN), so the update is unchanged, bit for bit (tests/test_resume.py).
        """
        device = flag.device
        if self._fused is None:
            self._fused = all(g.device == device and not g.is_sparse and g.is_floating_point() for g in grads)
        if self._fused:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, self._one)
        else:
            norms = torch.stack([n.to(device) for n in torch._foreach_norm(grads)])
            flag.copy_((~torch.isfinite(norms).all()).float().view(1))

    def after_batch(self) -> None:
        if self.learn.training and self.every > 1 and len(self._steps) == self.every:
            self.check_now()

    def after_train(self) -> None:
        self.check_now()

    def before_checkpoint(self) -> None:
        self.check_now()  # NaN weights must never become the newest checkpoint

    def check_now(self) -> None:
        """Read the window's losses and flags (one host read); raise NonFiniteError if a step went bad."""
        steps = getattr(self, "_steps", None)
        if not steps:  # nothing waiting (or checking every step, which reads at once)
            return
        losses, flags = self._window[:, : len(steps)].tolist()
        self._window[1].zero_()
        self._steps = []
        for step, loss, flag in zip(steps, losses, flags):
            if not math.isfinite(loss):
                self._stop("loss", "NaN/Inf", step)
            if flag >= self._limit and self._scaled:
                self._stop_skipped(step)
            if flag >= self._limit:
                self._stop("gradient", "NaN/Inf", step)

    def _stop_skipped(self, step: int) -> None:
        self._stop("gradient", f"NaN/Inf at every loss scale ({self.max_skipped} fp16 steps skipped in a row, "
                   f"the scale now {self.learn.scaler.get_scale():g})", step)

    def _stop(self, what: str, value: str, step: int) -> None:
        learn = self.learn
        layer = first_nonfinite_layer(learn.model, learn.xb)
        where = f" first in layer {layer}" if layer else ""
        message = (f"training stopped: the {what} became {value} at step {step} (epoch {learn.epoch + 1}, "
                   f"batch {learn.iter + 1}){where}; the last good checkpoint is kept. Lower the learning rate, "
                   f"add BatchNorm, or check the data")
        finding = Finding("loss_not_finite" if what == "loss" else "gradient_not_finite", "high", layer,
                          (step, step), f"the {what} became {value} at step {step}{where}",
                          "lower the learning rate or warm it up (fit_one_cycle); add BatchNorm; check the input data",
                          change={"lr": "x0.1"})
        raise NonFiniteError(message, finding)
