"""The training loop: a model, data, a loss, an optimizer, and events that callbacks plug into.

The loop knows no concrete callback except the Recorder it always adds (and, for `fit_one_cycle`, the
scheduler that drives the 1cycle curves). Everything else -- statistics, progress bars, run files --
listens to the events in `events.EVENTS`.

`state_dict()` / `load_state_dict()` hold everything a later fit needs to continue exactly where this one
stood (weights, optimizer, position, RNG streams, data order): a checkpoint is one of them on disk, and a
resumed run loads it before calling `fit` with the same arguments.

Host-device syncs are the enemy of a fast GPU loop, so the hot path (`_train_batch`) does none: losses
stay tensors, metrics are summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convscope.config import PRECISIONS
from convscope.data.batches import ResumableBatches, check_batches
from convscope.dist.context import all_reduce
from convscope.errors import ConfigError
from convscope.schedules.curves import one_cycle_schedules
from convscope.train.callback import Callback, ResumePoint
from convscope.train.events import (
    EVENTS,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from convscope.train.lr_finder import lr_find
from convscope.train.metrics import accuracy
from convscope.train.recorder import Recorder
from convscope.train.scheduler import ParamScheduler

OptFactory = Callable[..., torch.optim.Optimizer]


def adamw(params: Iterable[torch.nn.Parameter], lr: float, wd: float = 0.01) -> torch.optim.Optimizer:
    """fastai's default optimizer: Adam with decoupled weight decay, beta2 0.99, eps 1e-5.

    The fused kernel is used where this torch supports it for the parameters' device (it is the
    fastest implementation on both CPU and CUDA); the result is the same update.
    """
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=wd, fused=fused)


def sgd(params: Iterable[torch.nn.Parameter], lr: float, wd: float = 0.0) -> torch.optim.Optimizer:
    """SGD with momentum 0.9; `fit_one_cycle` cycles the momentum."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)


# Keyed by config.OPTIMIZER_NAMES, the names TrainConfig accepts (tests/train/test_optimizers.py: they agree).
OPTIMIZERS: dict[str, OptFactory] = {"adamw": adamw, "sgd": sgd}

# Keyed by config.PRECISIONS: the dtype the forward pass and loss run in under torch.autocast ("32": no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: object) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    return str(precision)


@dataclass(frozen=True)
class _Resume:
    """A position loaded by `load_state_dict`, for the next fit to continue from."""

    at: ResumePoint
    data: dict[str, torch.Tensor] | None  # the data order's state, for ResumableBatches
    run_dir: Path | None  # where callbacks reload what they saved (resume_from_run)


def check_positive(name: str, value: float) -> None:
    if not value > 0:  # also catches NaN
        raise ConfigError(f"{name} must be > 0, got {value!r}")


class Learner:
    """Trains `model` on `train_data`, validates on `valid_data`, and fires events for callbacks.

    `train_data` / `valid_data` are `Batches`: iterables of `(xb, yb)` batches with a length, such as a
    `convscope.data.batches.DeviceBatches` (fast, data on the device) or any `torch.utils.data.DataLoader`.

    `precision`: "32" (float32 throughout), "bf16" or "fp16": the forward pass and the loss (training and
    validation) run under `torch.autocast` in that dtype, the weights and the optimizer stay float32. fp16
    scales the loss with a `torch.amp.GradScaler` (`self.scaler`) and unscales the gradients right after
    backward, so every callback from `after_backward` on sees the true gradients; a step whose gradients
    overflowed is skipped by the scaler (`self.step_skipped`, a 1-element tensor, is 1.0 then). Mixed
    precision pays on GPUs: on a CPU without bf16/fp16 instructions it is many times slower than float32
    (docs/measurements.md#train-learner-precision).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        valid_data: Any = None,
        loss_func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        opt_func: OptFactory | str = "adamw",
        lr: float = 1e-3,
        wd: float = 0.01,
        metrics: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = (accuracy,),
        cbs: Sequence[Callback] = (),
        device: str | torch.device | None = None,
        precision: str = "32",
    ) -> None:
        check_positive("lr", lr)
        self.precision = check_precision(precision)
        check_batches(train_data, "train_data")
        if valid_data is not None:
            check_batches(valid_data, "valid_data")
        if isinstance(opt_func, str):
            if opt_func not in OPTIMIZERS:
                raise ConfigError(f"unknown optimizer {opt_func!r}; choose {' or '.join(OPTIMIZERS)}")
            opt_func = OPTIMIZERS[opt_func]
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        self.model = model.to(self.device)
        # What the training forward pass calls: the model itself, or a wrapper of it such as
        # DistributedDataParallel (set by dist.ddp.DistributedTrainer for the length of a fit).
        self.train_model: nn.Module | None = None
        self.train_data, self.valid_data = train_data, valid_data
        self.loss_func, self.opt_func, self.lr, self.wd = loss_func, opt_func, lr, wd
        self.metrics = list(metrics)
        self.opt: torch.optim.Optimizer | None = None
        self.cbs: list[Callback] = []
        self.training = False
        self.exception: BaseException | None = None
        self.train_iter = 0  # optimizer steps taken over the learner's life
        self.epoch = 0
        self.n_epochs = 0
        self.valid_results: dict[str, float] = {}
        # (epoch, batch) of the next training step, i.e. where a resume would continue: inside a fit, and
        # after one that stopped early (cancelled, interrupted, failed); None after a fit that ran to its end.
        self.position: tuple[int, int] | None = None
        self._resume: _Resume | None = None
        self._autocast_dtype = AUTOCAST_DTYPES[self.precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        # fp16: whether the scaler found an Inf/NaN gradient in this step and skipped it (on the device, no sync).
        self.step_skipped: torch.Tensor | None = None
        self.add_cbs([Recorder(), *cbs])

    # ----------------------------------------------------------------- callbacks
    def add_cb(self, cb: Callback) -> Callback:
        """Attach `cb` and make it reachable as `self.<cb.name>`."""
        existing = getattr(self, cb.name, None)
        if existing is not None and not isinstance(existing, Callback):
            raise ConfigError(f"callback name {cb.name!r} clashes with a Learner attribute; rename the class")
        if isinstance(existing, Callback) and existing in self.cbs:
            self.remove_cb(existing)
        cb.learn = self
        self.cbs.append(cb)
        setattr(self, cb.name, cb)
        return cb

    def add_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            self.add_cb(cb)

    def remove_cb(self, cb: Callback) -> None:
        """Stop sending events to `cb`; it stays reachable by name until another takes the name."""
        self.cbs.remove(cb)

    def _build_handlers(self) -> None:
        # Only overridden methods are called: a no-op call per callback per event per batch adds up.
        ordered = sorted(self.cbs, key=lambda c: c.order)  # stable: ties keep insertion order
        self._handlers = {
            ev: [getattr(cb, ev) for cb in ordered if getattr(type(cb), ev) is not getattr(Callback, ev)]
            for ev in EVENTS
        }

    def __call__(self, event: str) -> None:
        for handler in self._handlers[event]:
            handler()

    # ----------------------------------------------------------------- optimizer
    def create_opt(self) -> None:
        self.opt = self.opt_func(self.model.parameters(), lr=self.lr, wd=self.wd)

    def set_hyper(self, name: str, value: float) -> None:
        """Set 'lr', 'mom' (Adam's beta1 or SGD's momentum) or 'wd' on every parameter group."""
        assert self.opt is not None
        for group in self.opt.param_groups:
            if name == "lr":
                group["lr"] = value
            elif name == "mom":
                if "betas" in group:
                    group["betas"] = (value, group["betas"][1])
                elif "momentum" in group:
                    group["momentum"] = value
            elif name == "wd":
                group["weight_decay"] = value
            else:
                raise ConfigError(f"unknown hyper-parameter {name!r}; use 'lr', 'mom' or 'wd'")

    def get_hyper(self, name: str) -> float:
        assert self.opt is not None
        group = self.opt.param_groups[0]
        if name == "mom":
            return float(group["betas"][0]) if "betas" in group else float(group.get("momentum", 0.0))
        return float(group["weight_decay"] if name == "wd" else group[name])

    # ----------------------------------------------------------------- the loop
    def fit(self, n_epochs: float, lr: float | None = None, cbs: Sequence[Callback] = ()) -> None:
        """Train for `n_epochs` at a constant `lr` (or the learner's `lr`).

        `n_epochs` may be fractional (1.5: one epoch, then half of the next, validated at its end);
        the fit takes `round(n_epochs * batches per epoch)` optimizer steps, at least one.

        `cbs` are attached for this fit only; afterwards they stay reachable by name.
        After `load_state_dict` of a state taken inside a fit (a checkpoint), this fit continues from that
        state's position, as if it had never stopped: give it the same arguments as the fit it continues.
        """
        if isinstance(n_epochs, bool) or not isinstance(n_epochs, (int, float)) or not 0 < n_epochs < math.inf:
            raise ConfigError(f"n_epochs must be a number > 0 (fractions allowed), got {n_epochs!r}")
        if lr is not None:
            check_positive("lr", lr)
            self.lr = lr
        if len(self.train_data) == 0:
            raise ConfigError("the training data yields no batch: is the batch size larger than the data?")
        if self.opt is None:
            self.create_opt()
        self.set_hyper("lr", self.lr)
        self.n_iter = len(self.train_data)
        self.total_steps = max(1, round(n_epochs * self.n_iter))  # optimizer steps in this fit
        self.n_epochs = -(-self.total_steps // self.n_iter)  # epochs started, the last maybe partial
        resume, self._resume = self._resume, None
        start_epoch, self._first_batch = 0, 0
        if resume is not None:
            steps_before = resume.at.epoch * self.n_iter + resume.at.batch
            finished = resume.at.epoch == self.n_epochs and resume.at.batch == 0  # saved at the last epoch's end
            if not finished and (resume.at.epoch >= self.n_epochs or steps_before > self.total_steps):
                raise ConfigError(f"the checkpoint is at epoch {resume.at.epoch + 1}, past this fit's "
                                  f"{n_epochs} epochs")
            start_epoch, self._first_batch = resume.at.epoch, resume.at.batch
            if resume.data is not None and isinstance(self.train_data, ResumableBatches):
                self.train_data.resume_epoch(resume.data, resume.at.batch)
            self.epoch = start_epoch
        self.position = (start_epoch, self._first_batch)
        temporary = list(cbs)
        self.add_cbs(temporary)
        self._build_handlers()
        self.exception = None
        completed = False
        try:
            self("before_fit")
            if resume is not None and resume.run_dir is not None:
                for cb in sorted(self.cbs, key=lambda c: c.order):
                    cb.resume_from_run(resume.run_dir, resume.at)
            for epoch in range(start_epoch, self.n_epochs):
                self.epoch = epoch
                self._do_epoch()
            completed = True
        except CancelFitException:
            self("after_cancel_fit")
        except BaseException as exc:  # KeyboardInterrupt too: callbacks must still clean up
            self.exception = exc
            raise
        finally:
            # after_fit always runs (self.exception tells callbacks whether fit failed), so hooks are
            # removed and files flushed whatever happened.
            try:
                self("after_fit")
            finally:
                for cb in temporary:
                    if cb in self.cbs:
                        self.remove_cb(cb)
                self.training = False
                if completed:  # a fit that stopped early keeps its position, for state_dict()
                    self.position = None

    def fit_one_cycle(
        self,
        n_epochs: float,
        lr_max: float,
        pct_start: float = 0.25,
        div: float = 25.0,
        div_final: float = 1e5,
        moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
        cbs: Sequence[Callback] = (),
    ) -> None:
        """Leslie Smith's 1cycle: warm up from lr_max/div, train at lr_max, anneal to lr_max/div_final.

        Both phases follow cosine curves; the momentum moves the other way (high, low, high).
        """
        check_positive("lr_max", lr_max)
        scheds = one_cycle_schedules(lr_max, pct_start=pct_start, div=div, div_final=div_final, moms=moms)
        self.fit(n_epochs, lr=lr_max, cbs=[ParamScheduler(scheds), *cbs])

    def lr_find(self, **kwargs: Any) -> Any:
        """Learning-rate range test; see `convscope.train.lr_finder.lr_find` for the arguments."""
        return lr_find(self, **kwargs)

    def _do_epoch(self) -> None:
        try:
            self("before_epoch")
            self._do_train()
            if self.valid_data is not None:
                self.validate_epoch()
        except CancelEpochException:
            self("after_cancel_epoch")
        self.position = (self.epoch + 1, 0)
        self("after_epoch")

    def _do_train(self) -> None:
        self.training = True
        self.model.train()
        self.dl = self.train_data
        try:
            self("before_train")
            first, self._first_batch = self._first_batch, 0  # > 0 only in the first epoch of a resumed fit
            # ResumableBatches start at the resumed batch by themselves (resume_epoch); a DataLoader cannot
            # seek, so its epoch is replayed and the batches done before are dropped.
            start = first if isinstance(self.train_data, ResumableBatches) else 0
            stop = self.total_steps - self.epoch * self.n_iter  # < n_iter only in a fractional last epoch
            for i, (xb, yb) in enumerate(self.train_data, start=start):
                if i >= stop:
                    break
                if i < first:
                    continue
                self.iter = i
                self.xb, self.yb = self._to_device(xb), self._to_device(yb)
                self._train_batch()
        except CancelTrainException:
            self("after_cancel_train")
        self("after_train")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass and the loss run in: torch.autocast at the learner's precision, or
        nothing at all for "32" (so a float32 run is the same computation, bit for bit, as before)."""
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def _train_batch(self) -> None:
        scaler, unscaled = self.scaler, False
        try:
            self("before_batch")
            # Callbacks run outside autocast: what they compute from pred or loss is float32 work.
            with self.autocast():
                self.pred = (self.model if self.train_model is None else self.train_model)(self.xb)
            self("after_pred")
            with self.autocast():
                self.loss = self.loss_func(self.pred, self.yb)
            self("after_loss")
            self("before_backward")
            if scaler is None:
                self.loss.backward()
            else:
                scaler.scale(self.loss).backward()
                # Unscaled here, before any callback sees them: gradient norms, update ratios, the NaN guard
                # and FreezeLayers must see true gradients, not ones multiplied by the loss scale.
                scaler.unscale_(self.opt)
                unscaled = True
                # The scaler's own Inf/NaN flags of this step (it skips the update when one is set). The accessor
                # is private, but the public API only has get_scale(), a host sync, to tell a skip afterwards.
                self.step_skipped = sum(scaler._found_inf_per_device(self.opt).values())
            self("after_backward")
            self("before_step")
            if scaler is None:
                self.opt.step()
            else:
                scaler.step(self.opt)  # skips the update if a gradient was Inf/NaN (fused AdamW: on the device)
                scaler.update()
                unscaled = False
            self.train_iter += 1
            self("after_step")
            self.opt.zero_grad(set_to_none=True)
        except CancelBatchException:
            if unscaled:  # close the scaler's step, or the next unscale_ would refuse to run
                scaler.update()
            self("after_cancel_batch")
        self.position = (self.epoch, self.iter + 1)
        self("after_batch")

    def validate_epoch(self) -> None:
        """Evaluate on `valid_data`, firing before/after_validate; results land in `valid_results`."""
        self.training = False
        self.dl = self.valid_data
        try:
            self("before_validate")
            self.valid_results = self.validate()
        except CancelValidateException:
            self("after_cancel_validate")
        self("after_validate")

    def validate(self, data: Any = None) -> dict[str, float]:
        """Mean loss and metrics over `data` (default: the validation data), weighted by batch size."""
        data = self.valid_data if data is None else data
        was_training = self.model.training
        self.model.eval()
        total_loss = torch.zeros((), device=self.device)
        totals = [torch.zeros((), device=self.device) for _ in self.metrics]
        count = 0
        with torch.inference_mode():
            for xb, yb in data:
                xb, yb = self._to_device(xb), self._to_device(yb)
                with self.autocast():  # validated as it trains: at the learner's precision
                    pred = self.model(xb)
                    loss = self.loss_func(pred, yb)
                n = yb.shape[0]
                total_loss += loss.float() * n
                for i, metric in enumerate(self.metrics):
                    totals[i] += metric(pred, yb) * n
                count += n
        self.model.train(was_training)
        if count == 0:
            raise ConfigError("the validation data yields no batch")
        # Under torch.distributed each rank holds a shard of the data: sum the totals over ranks.
        sums = all_reduce(torch.stack([total_loss, *totals, torch.tensor(float(count), device=self.device)]))
        values = sums[:-1].div(sums[-1]).tolist()  # the one host read
        return {"valid_loss": values[0], **{m.__name__: v for m, v in zip(self.metrics, values[1:])}}

    def _to_device(self, t: Any) -> Any:
        return t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor) else t

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a later fit needs to continue exactly where this learner stands: weights and buffers,
        the optimizer, the position ("epoch", "batch": see `position`; None when there is no fit to go on), the
        optimizer steps taken, every RNG stream, the data order (for ResumableBatches), and for fp16 the loss
        scaler's state (scale and growth tracker: plain numbers; None otherwise). Tensors are the live ones,
        as in torch's own state_dicts: copy them to keep a snapshot."""
        at = self.position if self.position is not None else (
            (self._resume.at.epoch, self._resume.at.batch) if self._resume is not None else None)
        return {
            "model": self.model.state_dict(),
            "optimizer": None if self.opt is None else self.opt.state_dict(),
            "epoch": None if at is None else at[0],
            "batch": None if at is None else at[1],
            "train_iter": self.train_iter,
            "n_epochs": self.n_epochs,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "python": random.getstate(), "numpy": np.random.get_state()},
            "data": self.train_data.state_dict() if isinstance(self.train_data, ResumableBatches) else None,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], run_dir: str | Path | None = None) -> None:
        """Put back what `state_dict` returned. When the state was taken inside a fit (it has an "epoch"),
        the next `fit` continues from there; with `run_dir`, that fit also lets every callback reload what
        it saved in the run folder (`Callback.resume_from_run`)."""
        model_state = self.model.state_dict()
        self.model.load_state_dict({k: v.to(model_state[k].device) if k in model_state else v
                                    for k, v in state["model"].items()})
        if state.get("optimizer") is not None:
            if self.opt is None:
                self.create_opt()
            if len(state["optimizer"]["param_groups"]) != len(self.opt.param_groups):
                raise ConfigError("the saved optimizer state has a different number of parameter groups")
            self.opt.load_state_dict(state["optimizer"])
            _match_param_layout(self.opt)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        self.train_iter = state["train_iter"]
        # A state without a scaler (a float32 or bf16 run continued in fp16) keeps this learner's fresh one; a
        # scaler's state loaded by a learner without fp16 has nothing to scale and is left out.
        if state.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self._resume = None
        if state.get("epoch") is not None:
            at = ResumePoint(epoch=state["epoch"], batch=state["batch"], train_iter=state["train_iter"])
            self._resume = _Resume(at, state.get("data"), None if run_dir is None else Path(run_dir))
        elif state.get("data") is not None and isinstance(self.train_data, ResumableBatches):
            self.train_data.load_state_dict(state["data"])

    def bare_copy(self) -> Learner:
        """A learner on the same model, training data, loss and optimizer (its state included), with no
        validation data and no callback but its own Recorder: for short side runs, such as the LR finder's
        sweeps, that must leave this learner's counters, callbacks and Recorder alone."""
        copy = Learner(self.model, self.train_data, None, loss_func=self.loss_func, opt_func=self.opt_func,
                       lr=self.lr, wd=self.wd, metrics=(), device=self.device, precision=self.precision)
        copy.opt = self.opt  # None: the copy makes its own on its first fit, and this learner keeps none
        copy.train_model = self.train_model
        return copy

    # ----------------------------------------------------------------- helpers
    @property
    def pct_train(self) -> float:
        """Fraction of this fit's training steps done, in [0, 1)."""
        done = self.epoch * self.n_iter + getattr(self, "iter", 0)
        return done / max(1, self.total_steps)


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout.

    Saved states hold contiguous tensors, and `Optimizer.load_state_dict` keeps the layout it is given. A
    channels_last parameter would then get a contiguous exp_avg, and the fused AdamW kernel, which walks
    parameter and state in memory order, would pair the wrong elements.
    """
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
