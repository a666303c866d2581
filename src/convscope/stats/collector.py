"""StatsCollector: hooks + statistics + buffers, driven step by step by a Learner callback or `watch`.

Per recorded training step:
    begin_step(step)          decide whether this step is recorded, open a buffer row (the Learner), or
    open_on_forward(step)     let the step's first training forward pass open it (watch(): eval passes
                              between steps must not open or fill a row)
    (forward pass)            hooks write each watched layer's activation statistics
    after_backward()          per-layer gradient norms
    before_update()/after_update()   per-layer |weight change| / |weight| across the optimizer step
Nothing in that path reads a value back to the host; see buffer.py for when that happens.

Inside a torch.compile'd model the hooks are traced into the graph, and a traced hook must read nothing that
changes from step to step, or dynamo recompiles until its limit (the row's slot changes at every recorded
step). So there the hook only keeps a copy of the module's output (`_stash`: the first `sample` items),
guarded by one flag that is the same for a whole step (`recording`): two graphs in all, one for recorded and
one for other steps. The copies are turned into the row's statistics eagerly, at the first collector call
after the forward pass (after_backward, at the latest), exactly as the eager hook would have. A copy, because
a later in-place op in the graph (torchvision's `out += identity`) would change the output it was taken of.
The weights before the update are then copied by an optimizer step pre-hook (watch() knows no optimizer).

What a row holds, whichever drives it:
- Only training forward passes count: module.training, grad enabled, not inference mode. A pass in eval
  mode or under torch.no_grad()/inference_mode inside or between steps leaves the row alone.
- A module called several times in a step (shared weights, gradient accumulation's micro-batches):
  its LAST call of the step counts.
- A module whose output is a tuple, list or dict: the statistics of its first tensor (first element,
  first value); a module whose output holds no tensor counts as not run.
- A watched module that did not run in a row (a branch not taken): NaN statistics, ran[row, layer] False.
- Gradient norms are those of .grad when after_backward runs (in watch(): at w.step(), so the
  accumulated gradient of all micro-batches); a layer whose parameters all have no .grad or are all
  frozen (requires_grad False) gets NaN, and frozen[row, layer] says which of the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule
from torch.optim.optimizer import register_optimizer_step_pre_hook

from convscope.config import check_whole_number
from convscope.dist.context import all_reduce, current
from convscope.errors import ConfigError
from convscope.runs.stats_data import ActivationStatsData
from convscope.stats.buffer import StatsBuffer
from convscope.stats.compute import BinLayout, bin_layout, layer_stats
from convscope.stats.hooks import Hooks, select_modules
from convscope.stats.interval import AUTO, AUTO_START, DEFAULT_BUDGET, IntervalChooser
from convscope.stats.row_batch import DeviceRowBatch, RowBatch
from convscope.stats.unseen import functional_activations

HistRange = tuple[float, float] | str
# hist_range="auto": [0, 10] (fastai's range) for the outputs of activations that are never negative, and
# [-5, 5] for every other layer (conv, linear, normalisation, blocks), whose negative half a [0, 10] range
# would hide. Both split into 200 fine bins of 0.05 with 40 bins, so one row batch counts them all.
# Activations with bounded outputs get their bounds instead: a sigmoid's values in [0, 10] would fill 4 of
# the 40 bins. Their ranges split into as many fine bins (of 0.005 for [0, 1]), so the row batch takes them
# too (see _layouts).
NONNEGATIVE = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)
AFTER_ACTIVATION_RANGE = (0.0, 10.0)
SIGNED_RANGE = (-5.0, 5.0)
UNIT_BOUNDED = (nn.Sigmoid, nn.Hardsigmoid, nn.Softmax, nn.Softmin)  # values in [0, 1]


def output_bounds(module: nn.Module) -> tuple[float, float] | None:
    """The smallest and largest value `module` can output, for the activations that have them."""
    if isinstance(module, UNIT_BOUNDED):
        return (0.0, 1.0)
    if isinstance(module, nn.Tanh):
        return (-1.0, 1.0)
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return (float(module.min_val), float(module.max_val))
    return None


def auto_range(module: nn.Module, bins: int) -> tuple[float, float]:
    """hist_range="auto" for one module: its output bounds where they split into as many fine bins as the
    default ranges (so that one row batch still counts every layer), else [0, 10] or [-5, 5] (see above).
    ReLU6's [0, 6] does not split so with 40 bins, and keeps [0, 10]."""
    bounds = output_bounds(module)
    fine = bin_layout(bins, *AFTER_ACTIVATION_RANGE).fine
    if bounds is not None and fine and bin_layout(bins, *bounds, fine=fine).fine:
        return bounds
    return AFTER_ACTIVATION_RANGE if isinstance(module, NONNEGATIVE) else SIGNED_RANGE


def closed_at(module: nn.Module, hi: float) -> bool:
    """Whether `hi` is the most `module` can output (see compute.BinLayout.closed)."""
    bounds = output_bounds(module)
    return bounds is not None and bounds[1] == hi


RANGE_NAMES = ("auto", "signed", "adaptive")


def check_settings(every: int | str, bins: int, hist_range: HistRange, budget: float = DEFAULT_BUDGET) -> None:
    if every != AUTO:
        check_whole_number("every", every, note="or 'auto'")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < 1:
        raise ConfigError(f"budget must be a share of training time between 0 and 1, got {budget!r}")
    check_whole_number("bins", bins)
    if isinstance(hist_range, str):
        if hist_range not in RANGE_NAMES:
            raise ConfigError(f"hist_range must be (lo, hi), 'auto', 'signed' or 'adaptive', got {hist_range!r}")
    elif len(hist_range) != 2 or not hist_range[0] < hist_range[1]:
        raise ConfigError(f"hist_range must be (lo, hi) with lo < hi, got {hist_range!r}")


class StatsCollector:
    def __init__(self, model: nn.Module, every: int | str = 1, with_hist: bool = True, bins: int = 40,
                 hist_range: HistRange = "auto", modules: Iterable[Any] | str | None = None,
                 max_rows: int = 2048, block: int = 64, grad_stats: bool = True, sample: int | None = None,
                 budget: float = DEFAULT_BUDGET) -> None:
        check_settings(every, bins, hist_range, budget)
        if sample is not None:
            check_whole_number("sample", sample, note="batch items per recorded step")
        self.sample = sample
        self.model = model
        self.named = select_modules(model, modules)
        self.layers = [name for name, _ in self.named]
        self.with_hist, self.bins, self.grad_stats = with_hist, bins, grad_stats
        self.hist_range = hist_range
        self.ranges = self._initial_ranges(hist_range)
        self.layouts = self._layouts()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.across_ranks = current().distributed
        self.buffer = StatsBuffer(len(self.layers), bins if with_hist else 0, device, block, max_rows,
                                  across_ranks=self.across_ranks)
        # every="auto": start at AUTO_START and widen once from measured time (interval.py)
        self.chooser = IntervalChooser(budget) if every == AUTO else None
        self.buffer.set_every(AUTO_START if every == AUTO else every)
        self._timed_step: int | None = None  # the training step now running, for the chooser
        self._params = self._layer_params()
        self._owner: torch.Tensor | None = None  # each parameter's layer, on the buffer's device (attach)
        self.slot = -1
        self._armed: int | None = None  # open_on_forward: the step the next training forward opens
        self.scaler: Any = None  # a torch.amp.GradScaler whose scale .grad may still carry (watch)
        self._scaler_states: Any = None
        self.unseen = functional_activations(model, self.layers)
        self.hooks: Hooks | None = None
        # Module hooks only while a recorded step runs: a forward hook costs its module's every call a few
        # microseconds even when it returns at once (~1% of a step of the book model, measured with
        # benchmarks/model_overhead.py's method). Not around compiled code, which traces the hooks into its
        # graph once and must find them there at every step: kept on for a model holding a compiled module,
        # and from the first time a compiled graph runs them (its first trace, at step 0, which is recorded).
        self._lazy_hooks = not any(isinstance(m, OptimizedModule) for m in model.modules())
        self._optimizer_hook: Any = None
        self.recording = False  # whether this step's row is recorded (the only state a traced hook reads)
        self.stash: dict[int, torch.Tensor] = {}  # layer -> its output's copy, from traced hooks
        self._before: list[torch.Tensor] | None = None  # the weights before the update (grad_stats)
        self._have_before = False
        self._batch = self._row_batch(device)

    def _row_batch(self, device: torch.device) -> RowBatch | None:
        """All layers' counts of a row at once (row_batch.py), where that path applies; else None."""
        if self.across_ranks or not self.with_hist or not self.ranges:
            return None
        if len({layout.fine for layout in self.layouts}) != 1 or not self.layouts[0].fine:
            return None
        if any(layout.zero is None for layout in self.layouts):
            return None
        if device.type == "cpu":
            return RowBatch(self.bins, self.ranges, self.layouts)
        if device.type == "cuda":  # segmented sums and histc: other accelerators may lack them
            return DeviceRowBatch(self.bins, self.ranges, self.layouts)
        return None

    def _initial_ranges(self, hist_range: HistRange) -> list[tuple[float, float]] | None:
        if hist_range == "adaptive":
            return None  # fixed from the first recorded batch
        if hist_range == "auto":
            return [auto_range(m, self.bins) for _, m in self.named]
        lo, hi = (-10.0, 10.0) if hist_range == "signed" else (float(hist_range[0]), float(hist_range[1]))
        return [(lo, hi)] * len(self.layers)

    def _layouts(self) -> list[BinLayout]:
        if not self.ranges:
            return []
        # closed: a layer's overflow bin holds only values equal to hi, where hi is the most it can output
        closed = [closed_at(m, hi) for (_, m), (_, hi) in zip(self.named, self.ranges)]
        layouts = [bin_layout(self.bins, lo, hi, closed=c) for (lo, hi), c in zip(self.ranges, closed)]
        fines = {layout.fine for layout in layouts}
        if len(fines) > 1 and 0 not in fines:
            # One fine count for all layers where each range allows it (the largest, e.g. 5 for [0, 10] and
            # [0, 1] alike), so that one row batch counts them all (row_batch.py).
            fine = max(fines)
            same = [bin_layout(self.bins, lo, hi, fine, c) for (lo, hi), c in zip(self.ranges, closed)]
            if all(layout.fine for layout in same):
                return same
        return layouts

    def _layer_params(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The layers' own parameters, flattened, and which layer each belongs to. Frozen ones too: a layer
        frozen from the start is a frozen layer (flagged), not one without parameters."""
        params, owner = [], []
        for i, (_, m) in enumerate(self.named):
            for p in m.parameters(recurse=False):
                params.append(p)
                owner.append(i)
        return params, torch.tensor(owner, dtype=torch.long)

    # ----------------------------------------------------------------- lifecycle
    def attach(self) -> None:
        if self.hooks is None:
            self.hooks = Hooks([m for _, m in self.named], self._hook, traced=self._traced_hook, gate=self,
                               register=not self._lazy_hooks)
            self._optimizer_hook = register_optimizer_step_pre_hook(self._before_optimizer_step)
            device = self.buffer.values.device
            if self._owner is None or self._owner.device != device:  # made once: a fit attaches every time
                self._owner = self._params[1].to(device)
                self._has_params = torch.zeros(len(self.layers), dtype=torch.bool, device=device)
                self._has_params[self._owner] = True
                self._no_params = ~self._has_params
                self._has_params_host = np.zeros(len(self.layers), dtype=bool)
                self._has_params_host[self._params[1].numpy()] = True

    def detach(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None
            self._optimizer_hook.remove()
        self.end_step()

    def _arm(self) -> None:
        """Put the module hooks on for a step that is recorded (see _lazy_hooks)."""
        if self.hooks is not None:
            self.hooks.register()

    def _disarm(self) -> None:
        if self._lazy_hooks and self.hooks is not None:
            self.hooks.remove()

    # ----------------------------------------------------------------- per step
    def begin_step(self, step: int, training: bool = True) -> bool:
        """Open a row if `step` is recorded; returns whether it is."""
        if self.chooser is not None and training and self._armed is None:
            # the Learner's step, timed from its batch to its end (not from the epoch's end); a row that the
            # first forward pass opens (watch()) is timed from the previous step's end
            self.chooser.step_started()
        self._armed = None
        self._timed_step = step if training else None
        self.slot = self.buffer.open_row(step) if training and self.buffer.should_record(step) else -1
        self.recording = self.slot >= 0
        if self.recording:
            self._arm()
        if self.slot >= 0 and self.scaler is not None:
            self._scaler_states = self.scaler._per_optimizer_states
        return self.slot >= 0

    def open_on_forward(self, step: int) -> None:
        """The next training forward pass of a watched module opens step `step`'s row (if recorded)."""
        self.slot = -1
        self._armed = step
        self._timed_step = step
        self.recording = self.buffer.should_record(step)
        if self.recording:
            self._arm()  # the hooks are what sees the step's first training forward pass

    def _traced_hook(self, i: int, module: nn.Module, output: Any) -> None:
        """The hook as a compiled graph runs it: keep a copy of the output (see the module docstring)."""
        if not (self.recording and module.training and torch.is_grad_enabled()):
            return
        output = _first_tensor(output)
        if output is not None:
            output = output.detach()
            if self.sample is not None and output.ndim > 0:
                output = output[: self.sample]
            self.stash[i] = output.clone()

    def _take_stash(self) -> None:
        """Turn the copies traced hooks kept into the row's statistics, in layer order."""
        if not self.stash:
            return
        if self._lazy_hooks:  # a compiled graph ran the hooks: from now on they stay on (see _lazy_hooks)
            self._lazy_hooks = False
            self._arm()
        stash, self.stash = self.stash, {}
        if self._armed is not None:
            have_before = self._have_before  # the optimizer pre-hook may have copied the weights already
            self.begin_step(self._armed)
            self._have_before = have_before and self.slot >= 0
        for i in sorted(stash):
            if self.slot >= 0:
                self._record(i, stash[i])

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # A row whose weights nobody copied yet (watch() around a compiled model, where no eager hook opened
        # the row): copy them now, as the forward pass saw them. A torch optimizer's step pre-hook, for every
        # optimizer while attached; a step with its weights already copied returns at once.
        if not self._have_before and (self.slot >= 0 or (self.stash and self._armed is not None)):
            self._copy_weights()

    def _hook(self, i: int, module: nn.Module, inputs: Any, output: Any) -> None:
        # Cheap host checks first: a pass in eval mode or without autograd is not a training step.
        if not (module.training and torch.is_grad_enabled()) or torch.is_inference_mode_enabled():
            return
        if self.stash:
            self._take_stash()  # a compiled part ran before this eager one in the same step
        if self._armed is not None:
            if self.begin_step(self._armed):
                self.before_update()  # weights as the forward saw them: the optimizer has not run yet
        if self.slot < 0:
            return
        self._record(i, output)

    def _record(self, i: int, output: Any) -> None:
        """Layer i's statistics of `output` into the open row."""
        output = _first_tensor(output)
        if output is None or output.numel() == 0:  # nothing to count: the layer reads as not run
            return
        if self.ranges is None:
            self._fix_adaptive_ranges(i, output)
            if self.ranges is None:
                return
        lo, hi = self.ranges[i]
        b, slot = self.buffer, self.slot
        if self.sample is not None and output.ndim > 0:
            output = output[: self.sample]  # a view: the first items of the batch (batches are shuffled)
        if self._batch is not None and self._batch.takes(output):
            b.sizes[slot, i] = self._batch.add(i, output, b.value_views[slot][i])
            if self._batch.complete():
                self._finish_row()
            return
        if self._batch is not None:
            self._batch.forget(i)  # a module called twice: this later call is the one kept
        hist = b.hist_views[slot][i] if self.with_hist else None
        b.sizes[slot, i] = layer_stats(output, b.value_views[slot][i], hist, self.bins, lo, hi, self.layouts[i],
                                       self._channel_max(slot, i, output))

    def _finish_row(self) -> None:
        """Count the histograms, near-zero values and dead channels of the layers seen in this row."""
        if self._batch is not None and self._batch.pending:
            self._batch.finish(self.buffer.values[self.slot], self.buffer.hist[self.slot])

    def _channel_max(self, slot: int, i: int, output: torch.Tensor) -> torch.Tensor | None:
        if not self.across_ranks:
            return None
        return self.buffer.channel_max_row(slot, i, output.shape[1] if output.ndim >= 2 else 1)

    def _fix_adaptive_ranges(self, i: int, output: torch.Tensor) -> None:
        # One host read, once per run: per-layer ranges from the first recorded batch, with headroom.
        if not hasattr(self, "_pending_ranges"):
            self._pending_ranges: dict[int, tuple[float, float]] = {}
        lo_hi = torch.stack(list(torch.aminmax(output.detach().float())))
        if self.across_ranks:  # one range for all ranks, or their histograms could not be added
            lo_hi[0].neg_()
            all_reduce(lo_hi, "max")
            lo_hi[0].neg_()
        lo, hi = (float(v) for v in lo_hi)
        span = max(hi - lo, 1e-6)
        self._pending_ranges[i] = (min(0.0, lo - 0.5 * span), max(hi + 0.5 * span, 1e-6))
        lo, hi = self._pending_ranges[i]
        b, slot = self.buffer, self.slot
        b.sizes[slot, i] = layer_stats(output, b.value_views[slot][i], b.hist_views[slot][i] if self.with_hist
                                       else None, self.bins, lo, hi, bin_layout(self.bins, lo, hi),
                                       self._channel_max(slot, i, output))
        if len(self._pending_ranges) == len(self.layers):
            self.ranges = [self._pending_ranges[j] for j in range(len(self.layers))]
            self.layouts = self._layouts()

    def after_backward(self) -> None:
        self._take_stash()
        if self.slot >= 0:
            self._finish_row()  # a layer that did not run this step left the row open
        if self.slot < 0 or not self.grad_stats or not self._params[0]:
            return
        params = self._params[0]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        norms = self._per_layer_norm(torch._foreach_norm(grads))
        scale = self._grad_scale()
        if scale is not None:
            norms = norms / scale  # .grad still carries the loss scale: the norm of the true gradient
        self.buffer.grads[self.slot, :, 0] = norms
        self._mark_frozen(self.buffer.grads[self.slot, :, 0])
        # No .grad at all (the layer took no part in this step's loss): no gradient, not a zero one.
        missing = tuple(p.grad is None and p.requires_grad for p in params)
        if any(missing):
            self.buffer.grads[self.slot, :, 0].masked_fill_(self._layer_mask(missing, "_missing"), float("nan"))

    def _grad_scale(self) -> torch.Tensor | None:
        """The loss scale that .grad still carries at this moment, or None when it carries none.

        GradScaler.step(opt) unscales .grad in place (unless scaler.unscale_(opt) did already) and keeps
        that in its per-optimizer state, which scaler.update() replaces with a new empty dict. So, with the
        dict seen when the row opened: a new dict means update() ran (unscaled); a stage past READY means
        unscale_/step ran (unscaled); the same dict with no such stage means the scaler has not touched
        .grad yet (w.step() before scaler.step(opt)): divide by the scale in use, a device tensor (no sync).
        """
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled():
            return None
        states = scaler._per_optimizer_states
        if states is not self._scaler_states:
            return None
        if scaler._scale is None or any(state["stage"].value != 0 for state in states.values()):  # READY is 0
            return None
        return scaler._scale.to(self.buffer.grads.device).float()

    def _layer_mask(self, flags: tuple[bool, ...], cache: str) -> torch.Tensor:
        """Device mask of the layers whose parameters all have `flags` set, rebuilt only when flags change."""
        key = getattr(self, cache, None)
        if key is None or key[0] != flags:
            per_layer = [True] * len(self.layers)
            for flag, layer in zip(flags, self._params[1].tolist()):
                per_layer[layer] = per_layer[layer] and flag
            host = np.asarray(per_layer) & self._has_params_host
            key = (flags, torch.tensor(host, device=self.buffer.grads.device), host)
            setattr(self, cache, key)
        return key[1]

    def _mark_frozen(self, row: torch.Tensor) -> None:
        """NaN for layers whose parameters are all frozen (see train/freeze.py): they have no gradient and
        no update, which is not the same as a gradient of zero (that would read as a vanishing gradient).
        The buffer's host-side frozen flags say which NaNs these are."""
        flags = tuple(not p.requires_grad for p in self._params[0])
        if not any(flags):
            return
        mask = self._layer_mask(flags, "_frozen")
        row.masked_fill_(mask, float("nan"))
        self.buffer.frozen[self.slot] = self._frozen[2]

    def before_update(self) -> None:
        self._take_stash()
        if self.slot >= 0:
            self._copy_weights()

    @torch.no_grad()  # instead of a detach() per parameter: each is an op
    def _copy_weights(self) -> None:
        if self.grad_stats and self._params[0]:
            params = self._params[0]
            if self._before is None or any(b.shape != p.shape for b, p in zip(self._before, params)):
                self._before = [torch.empty_like(p) for p in params]
            torch._foreach_copy_(self._before, params)  # one launch on a GPU, not one per parameter
            self._have_before = True

    def after_update(self) -> None:
        # Checked outside no_grad: entering its context costs ~20 us in training (a cold cache), more than
        # all the rest of a step that records nothing.
        if self.slot >= 0 and self._have_before:
            self._update_ratios()

    @torch.no_grad()
    def _update_ratios(self) -> None:
        before, after = self._before, self._params[0]
        # |w_after - w_before| and |w_before| per tensor, in one list, combined per layer in one pass.
        norms = torch._foreach_norm([*torch._foreach_sub(after, before), *before])
        delta, weight = self._per_layer_norm(norms).view(2, -1)
        self.buffer.grads[self.slot, :, 1] = delta / weight
        self._mark_frozen(self.buffer.grads[self.slot, :, 1])
        self._have_before = False

    def _per_layer_norm(self, norms: list[torch.Tensor]) -> torch.Tensor:
        """Combine per-tensor L2 norms into per-layer norms (NaN for layers without parameters); `norms`
        may hold several lists of all parameters one after another: [lists * layers] then."""
        sq = torch.stack(norms).float().pow(2).view(-1, len(self._params[0]))
        out = torch.zeros(len(sq), len(self.layers), device=sq.device).index_add_(1, self._owner, sq).sqrt_()
        return out.masked_fill_(self._no_params, float("nan")).view(-1)

    def abandon_row(self) -> None:
        """Forget the open row: its step never finished (watch() left with no w.step() after a forward)."""
        if self.slot >= 0 and self.slot == len(self.buffer.block_steps) - 1:
            self.buffer.block_steps.pop()
        self.slot, self._armed, self.recording, self.stash = -1, None, False, {}
        self._timed_step = None
        self._disarm()

    def end_step(self) -> None:
        self._take_stash()
        if self.slot >= 0:
            self._finish_row()
        if self.chooser is not None and self._timed_step is not None:
            self._time_step(self._timed_step, self.slot >= 0)
        self._timed_step = None
        self.slot = -1
        self._armed = None
        self.recording = False
        self._disarm()

    def _time_step(self, step: int, recorded: bool) -> None:
        every = self.chooser.step_ended(step, recorded)
        if every is None:
            return
        if self.across_ranks:  # every rank must keep the same rows: the widest interval any rank chose
            chosen = torch.tensor(float(every), device=self.buffer.values.device)
            all_reduce(chosen, "max")
            every = int(chosen.item())  # once per run
            self.chooser.measured["every"] = every
        self.buffer.widen(every)

    # ----------------------------------------------------------------- results
    def flush(self) -> None:
        self.buffer.flush()

    def drop_pending(self) -> None:
        self.buffer.drop_pending()

    def restore(self, data: ActivationStatsData, before_step: int) -> None:
        """Continue a resumed run: keep the saved rows recorded before `before_step`."""
        if data.layers != self.layers:
            raise ConfigError(f"saved statistics are for layers {data.layers[:3]}..., this model has "
                              f"{self.layers[:3]}...: resume with the same model")
        keep = data.steps < before_step
        unknown = np.full(data.mean.shape, np.nan)  # a run saved before these were recorded
        negative = unknown if data.negative is None else data.negative
        abs_near = unknown if data.abs_near_zero is None else data.abs_near_zero
        values = np.stack([data.mean, data.std, data.near_zero, data.dead, negative, abs_near], axis=-1)[keep]
        grads = np.stack([data.grad_norm, data.update_ratio], axis=-1)[keep]
        self.buffer.restore(data.steps[keep], values, data.hist[keep], grads, data.every, data.ran[keep],
                            data.frozen[keep])
        if self.chooser is not None and data.interval:
            self.chooser.keep(data.interval)
        saved = [(float(lo), float(hi)) for lo, hi in data.hist_range]
        if len(data.steps) and saved != self.ranges:
            # Adaptive ranges, or a run saved by a version whose "auto" ranges differed (before bounded
            # activations got their bounds): the resumed rows keep the saved ranges, one per layer for all rows.
            self.ranges = saved
            self.layouts = self._layouts()
            if self.hist_range != "adaptive":
                self._batch = self._row_batch(self.buffer.values.device)

    def data(self) -> ActivationStatsData:
        self.flush()
        b = self.buffer
        n = b.n_rows
        mean, std, near, dead, negative, abs_near = (b.h_values[:n, :, j].copy() for j in range(6))
        ranges = self.ranges or [(0.0, 0.0)] * len(self.layers)
        return ActivationStatsData(
            layers=list(self.layers), steps=b.h_steps[:n].copy(), mean=mean, std=std, near_zero=near,
            dead=dead, negative=negative, abs_near_zero=abs_near, hist=b.h_hist[:n].copy(),
            hist_range=np.asarray(ranges, dtype=np.float64),
            grad_norm=b.h_grads[:n, :, 0].astype(np.float64), update_ratio=b.h_grads[:n, :, 1].astype(np.float64),
            every=b.every, kinds=[type(m).__name__ for _, m in self.named], ran=b.h_ran[:n].copy(),
            frozen=b.h_frozen[:n].copy(), unseen=self._unseen(b.h_ran[:n]),
            interval=dict(self.chooser.measured) if self.chooser is not None else {},
        )

    def _unseen(self, ran: np.ndarray) -> list[tuple[str, str]]:
        never = [(self.layers[i], "never ran in a recorded training step") for i in np.flatnonzero(~ran.any(0))]
        return never + list(self.unseen) if len(ran) else list(self.unseen)


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module's output is counted by: itself, or the first tensor of a tuple, list or dict."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    return next((item for item in items if isinstance(item, torch.Tensor)), None)
