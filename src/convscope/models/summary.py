"""A per-layer table of shapes, parameters, compute and receptive field, for any `nn.Module`.

`summary(model, (1, 28, 28))` runs one forward pass on zeros (batch of 1, eval mode, no grad) with hooks
on every leaf module and returns a `Summary`: one `LayerRow` per leaf call, in execution order.

What the columns mean, and the choices behind them:

* params / trainable: each parameter tensor is counted once, on the first row that uses it, so a module
  called twice (or a weight tied between two modules) adds nothing on its second row and the totals equal
  the sum of the rows. Modules that own parameters directly (besides their children) get their own row,
  and modules with parameters that the forward pass never reached are listed last with call 0.
* MACs (multiply-accumulates per sample): Conv = out_h*out_w*out_c * (in_c/groups)*kh*kw, transposed
  Conv = in_h*in_w*in_c * (out_c/groups)*kh*kw (its in/pos and out ch stay empty), Linear = positions *
  in*out (an RNN or attention layer counts 0: only Conv and Linear are counted). BatchNorm, activations,
  pooling and other elementwise work count 0: they are O(outputs), small next to the products, and BN
  folds into the preceding conv at inference.
* in/pos and out ch: the inputs one output position combines (in_c/groups*kh*kw, or in_features) next to
  the outputs it produces there. When in/pos is at most twice out ch (e.g. 9 pixels -> 8 channels for a
  3x3 first layer) the conv can barely do more than reshuffle its input; the notes say so.
* RF and jump: receptive field size in input pixels and the input-pixel distance between neighbouring
  outputs, from r_out = r_in + (k_eff - 1) * j_in and j_out = j_in * s with k_eff = d*(k-1)+1, for
  Conv/MaxPool/AvgPool/LPPool; adaptive pools use k = ceil(in/out), s = floor(in/out); a layer that keeps
  the spatial size passes both through; anything else (Flatten, Linear, ConvTranspose, upsampling) ends
  the chain ("-").
  RF is tracked per tensor, so a branch reads the RF of the tensor it is given; a tensor made by an
  unhooked operation (torch.cat, a residual `+`) takes the most recent layer's RF, which is exact for
  chains and the larger branch for residual blocks. The RF may exceed the input size: padding lets the
  outputs near the border "see" pixels that are not there.
* An input the model cannot take (smaller than a kernel with its padding, wrong channel count) raises
  ConfigError naming the input shape, the failing layer and, for a too-small grid, the size it needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from convscope.config import is_whole_number
from convscope.errors import ConfigError, ConvscopeError

__all__ = ["LayerRow", "Summary", "print_summary", "summary"]

_Pair = tuple[int, ...]
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.LPPool1d, nn.LPPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
# A conv keeping its output at or below this multiple of its inputs per position gets a note.
_RESHUFFLE_RATIO = 2


@dataclass(frozen=True)
class LayerRow:
    """One call of one leaf module (shapes exclude the batch dimension)."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    trainable: int
    macs: int
    inputs_per_position: int | None
    out_channels: int | None
    receptive_field: _Pair | None
    jump: _Pair | None
    call: int = 1  # 2, 3, ... for a module run again; 0 for one the forward pass never ran

    @property
    def label(self) -> str:
        """The name as shown in tables: reused calls get "#2", unreached modules "(unused)"."""
        name = self.name or "(model)"
        if self.call == 0:
            return f"{name} (unused)"
        return name if self.call == 1 else f"{name} #{self.call}"


@dataclass
class Summary:
    """The result of `summary`; `str(s)` is a text table, `s.to_dict()` a JSON-ready dict."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None
    rows: list[LayerRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    def row(self, name: str, call: int = 1) -> LayerRow:
        """The row of module `name` (its `call`-th run); KeyError if there is none."""
        for r in self.rows:
            if r.name == name and r.call == call:
                return r
        raise KeyError(f"no row for layer {name!r} (call {call})")

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def receptive_field(self) -> _Pair | None:
        """The receptive field of the last layer that still has a spatial grid."""
        rfs = [r.receptive_field for r in self.rows if r.receptive_field is not None]
        return rfs[-1] if rfs else None

    def notes(self) -> list[str]:
        """Plain-language observations: convs that barely reshuffle, where the RF covers the input."""
        notes = []
        for r in self.rows:
            if r.type.startswith("Conv") and r.inputs_per_position and r.out_channels and r.call == 1:
                if r.inputs_per_position <= _RESHUFFLE_RATIO * r.out_channels:
                    notes.append(
                        f"{r.label}: each position combines {r.inputs_per_position} inputs into "
                        f"{r.out_channels} channels, so it can do little more than reshuffle them "
                        "(a larger kernel or fewer filters gives it something to compute)"
                    )
        spatial = self.input_shape[1:]
        for r in self.rows:
            rf = r.receptive_field
            if rf is None or len(rf) != len(spatial):
                continue
            if all(a >= b for a, b in zip(rf, spatial, strict=True)):
                notes.append(
                    f"{r.label}: receptive field {_fmt_tuple(rf)} px >= the {_fmt_tuple(spatial)} px input: "
                    "one output here spans the width of the image (near the borders, part of it is padding)"
                )
                break
        return notes

    def to_dict(self) -> dict[str, Any]:
        """Everything in plain Python types (tuples as lists), ready for json.dumps."""

        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        return {
            "input_shape": list(self.input_shape),
            "output_shape": plain(self.output_shape),
            "rows": [{k: plain(v) for k, v in asdict(r).items()} for r in self.rows],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_macs": self.total_macs,
            "receptive_field": plain(self.receptive_field),
            "notes": self.notes(),
        }

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and formatted cells, shared by `__str__` and `print_summary`."""
        header = ["Layer", "Type", "Output", "Params", "In/pos", "Out ch", "MACs", "MACs %", "RF", "Jump"]
        total = self.total_macs or 1
        cells = [
            [
                r.label, r.type, _fmt_shape(r.output_shape), f"{r.params:,}",
                _fmt_opt(r.inputs_per_position), _fmt_opt(r.out_channels), f"{r.macs:,}",
                f"{100 * r.macs / total:.1f}" if r.macs else "-",
                _fmt_tuple(r.receptive_field), _fmt_tuple(r.jump),
            ]
            for r in self.rows
        ]
        return header, cells

    def footer(self) -> list[str]:
        """Totals and notes, one line each."""
        lines = [
            f"Input {_fmt_shape(self.input_shape)} -> output {_fmt_shape(self.output_shape)}",
            f"Params: {self.total_params:,} ({self.trainable_params:,} trainable)   "
            f"MACs per sample: {self.total_macs:,}   Receptive field: {_fmt_tuple(self.receptive_field)}",
        ]
        return lines + [f"Note: {n}" for n in self.notes()]

    def __str__(self) -> str:
        header, cells = self.table()
        widths = [max(len(c) for c in col) for col in zip(header, *cells, strict=True)]
        left = {0, 1, 2}  # names and shapes read left to right; numbers line up on the right

        def line(values: list[str]) -> str:
            pairs = enumerate(zip(values, widths, strict=True))
            parts = [v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in pairs]
            return "  ".join(parts).rstrip()

        rule = "-" * len(line(header))
        return "\n".join([line(header), rule, *(line(c) for c in cells), rule, *self.footer()])


def _fmt_opt(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "[" + ", ".join(str(s) for s in shape) + "]"


def _fmt_tuple(t: _Pair | None) -> str:
    """'5' for a square 5x5 field, '5x3' otherwise, '-' when unknown."""
    if t is None:
        return "-"
    return str(t[0]) if len(set(t)) == 1 else "x".join(str(v) for v in t)


def _ntuple(v: Any, n: int) -> _Pair:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _first_tensor(x: Any) -> torch.Tensor | None:
    """The first tensor in a (possibly nested) output: LSTMs return tuples, some models dicts."""
    if isinstance(x, torch.Tensor):
        return x
    items = x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else ()
    for item in items:
        t = _first_tensor(item)
        if t is not None:
            return t
    return None


def _kernel_stride(
    module: nn.Module, inp: torch.Tensor, out: torch.Tensor, n: int
) -> tuple[_Pair, _Pair] | None:
    """Effective kernel and stride of a spatial layer, or None if it is not one we know."""
    if (isinstance(module, _ConvNd) and not module.transposed) or isinstance(module, _POOLS):
        k = _ntuple(module.kernel_size, n)
        s = _ntuple(module.stride if module.stride is not None else module.kernel_size, n)
        d = _ntuple(getattr(module, "dilation", 1), n)
        return tuple(di * (ki - 1) + 1 for ki, di in zip(k, d, strict=True)), s
    if isinstance(module, _ADAPTIVE):
        ins, outs = inp.shape[2:], out.shape[2:]
        return (tuple(math.ceil(i / o) for i, o in zip(ins, outs, strict=True)),
                tuple(max(i // o, 1) for i, o in zip(ins, outs, strict=True)))
    return None


def _rf_step(module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor | None,
             rf: _Pair | None, jump: _Pair | None) -> tuple[_Pair | None, _Pair | None]:
    """Apply the receptive-field recurrence for one layer (see the module docstring)."""
    if rf is None or jump is None or inp is None or out is None:
        return None, None
    n = len(rf)
    if inp.dim() != n + 2 or out.dim() != n + 2:
        return None, None
    ks = _kernel_stride(module, inp, out, n)
    if ks is not None:
        k, s = ks
        return (tuple(r + (ki - 1) * j for r, ki, j in zip(rf, k, jump, strict=True)),
                tuple(j * si for j, si in zip(jump, s, strict=True)))
    if inp.shape[2:] == out.shape[2:]:
        return rf, jump  # elementwise or channel-only (ReLU, BN, Dropout, 1x1 projections)
    return None, None


def _macs(
    module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor | None
) -> tuple[int, int | None, int | None]:
    """(MACs, inputs per position, outputs per position) for the batch-of-1 forward pass."""
    if isinstance(module, _ConvNd) and inp is not None and out is not None:
        kernel = math.prod(_ntuple(module.kernel_size, inp.dim() - 2))
        if module.transposed:
            # each input position scatters into out_c/groups*kh*kw outputs; "inputs per output position"
            # depends on where the output falls on the stride grid, so those columns stay empty
            return inp.numel() * (module.out_channels // module.groups * kernel), None, None
        per_pos = module.in_channels // module.groups * kernel
        return out.numel() * per_pos, per_pos, module.out_channels
    if isinstance(module, nn.Linear) and out is not None:
        return out.numel() * module.in_features, module.in_features, module.out_features
    return 0, None, None


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or not all(is_whole_number(s) for s in shape):
        raise ConfigError(
            f"input_shape must be a non-empty tuple of positive ints without the batch dimension, "
            f"e.g. (1, 28, 28); got {input_shape!r}"
        )
    return shape


def _too_small(module: nn.Module, inp: torch.Tensor) -> str | None:
    """Why `inp` is too small for a conv/pool `module`, or None if its size is not the problem."""
    if not (isinstance(module, (_ConvNd, *_POOLS))) or inp.dim() < 3:
        return None
    n = inp.dim() - 2
    k = _ntuple(module.kernel_size, n)
    d = _ntuple(getattr(module, "dilation", 1), n)
    pad = getattr(module, "padding", 0)
    if pad == "same":
        return None  # "same" padding accepts any size
    pad = (0,) * n if pad == "valid" else _ntuple(pad, n)
    need = tuple(max(di * (ki - 1) + 1 - 2 * p, 1) for ki, di, p in zip(k, d, pad, strict=True))
    got = tuple(inp.shape[2:])
    if all(g >= m for g, m in zip(got, need, strict=True)):
        return None
    grid = "x".join
    return (f"gets a {grid(map(str, got))} grid but needs at least {grid(map(str, need))} "
            f"(kernel {_fmt_tuple(k)}, padding {_fmt_tuple(pad)})")


def _has_children(m: nn.Module) -> bool:
    return next(iter(m.children()), None) is not None


def _has_own_params(m: nn.Module) -> bool:
    return next(iter(m.parameters(recurse=False)), None) is not None


class _Recorder:
    """Forward hooks that turn one forward pass into `LayerRow`s."""

    def __init__(self, model: nn.Module, spatial_dims: int) -> None:
        named = list(model.named_modules())
        self.names = {m: name for name, m in named}
        # Leaves do the work; a container that owns parameters itself (a class token, a scale) gets a row
        # so its parameters are counted, but it does not advance the receptive field.
        self.recorded = {m for _, m in named if not _has_children(m) or _has_own_params(m)}
        self.rows: list[LayerRow] = []
        self.calls: dict[nn.Module, int] = {}
        self.seen: set[int] = set()
        self.stack: list[tuple[nn.Module, torch.Tensor | None]] = []
        # id(tensor) -> (tensor, rf, jump); the tensor is kept so its id cannot be reused by another.
        self.rf: dict[int, tuple[torch.Tensor, _Pair | None, _Pair | None]] = {}
        self.last: tuple[_Pair | None, _Pair | None] = ((1,) * spatial_dims, (1,) * spatial_dims) \
            if spatial_dims else (None, None)

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.stack.append((module, _first_tensor(args)))

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.stack.pop()
        if module not in self.recorded:
            return
        inp, out = _first_tensor(args), _first_tensor(output)
        leaf = not _has_children(module)
        if leaf:
            entry = self.rf.get(id(inp)) if inp is not None else None
            rf, jump = (entry[1], entry[2]) if entry is not None else self.last
            rf, jump = _rf_step(module, inp, out, rf, jump)
            if out is not None:
                self.rf[id(out)] = (out, rf, jump)
            self.last = (rf, jump)
        else:
            entry = self.rf.get(id(out)) if out is not None else None
            rf, jump = (entry[1], entry[2]) if entry is not None else (None, None)
        self.calls[module] = self.calls.get(module, 0) + 1
        macs, per_pos, out_ch = _macs(module, inp, out) if leaf else (0, None, None)
        self.add_row(module, self.calls[module], out, macs, per_pos, out_ch, rf, jump)

    def add_row(self, module: nn.Module, call: int, out: torch.Tensor | None, macs: int,
                per_pos: int | None, out_ch: int | None, rf: _Pair | None, jump: _Pair | None) -> None:
        params = trainable = 0
        for p in module.parameters(recurse=not _has_children(module)):
            if id(p) not in self.seen:  # counted once, however often the module or a tied weight is used
                self.seen.add(id(p))
                params += p.numel()
                trainable += p.numel() if p.requires_grad else 0
        shape = tuple(out.shape[1:]) if out is not None else None
        self.rows.append(LayerRow(self.names[module], type(module).__name__, shape, params, trainable,
                                  macs, per_pos, out_ch, rf, jump, call))

    def add_unused(self) -> None:
        """Rows for modules with parameters that the forward pass never ran."""
        for module in self.names:
            if module in self.recorded and module not in self.calls:
                self.add_row(module, 0, None, 0, None, None, None, None)
                if self.rows[-1].params == 0:
                    self.rows.pop()


def summary(
    model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str | None = None
) -> Summary:
    """Run one forward pass on zeros of shape (1, *input_shape) and tabulate every leaf layer.

    Args:
        model: any module; its train/eval flags and parameters are left as they were.
        input_shape: one sample's shape without the batch dimension, e.g. (1, 28, 28) or (784,).
        device: where to run; defaults to the device of the model's first parameter (or CPU).

    Raises:
        ConfigError: a malformed input_shape, or an input the model cannot take (too small for a kernel,
            wrong number of channels); the message names the layer that failed.
    """
    shape = _check_input_shape(input_shape)
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    if device is None:
        device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros((1, *shape), device=device, dtype=dtype)

    rec = _Recorder(model, len(shape) - 1)
    rec.rf[id(x)] = (x, *rec.last)
    modes = {m: m.training for m in model.modules()}
    handles = []
    for m in rec.names:
        handles.append(m.register_forward_pre_hook(rec.pre_hook))
        handles.append(m.register_forward_hook(rec.hook))
    model.eval()  # batch of 1: BatchNorm in training mode would refuse a 1x1 grid
    try:
        with torch.no_grad():
            out = model(x)
    except ConvscopeError:
        raise
    except (RuntimeError, ValueError) as e:
        raise ConfigError(_fit_message(shape, rec, e)) from e
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    rec.add_unused()
    out_t = _first_tensor(out)
    return Summary(shape, tuple(out_t.shape[1:]) if out_t is not None else None, rec.rows)


def _fit_message(shape: tuple[int, ...], rec: _Recorder, err: Exception) -> str:
    """One line saying which layer refused the input and why."""
    if not rec.stack:
        return f"input shape {shape} does not fit the model: {str(err).strip().splitlines()[0]}"
    module, inp = rec.stack[-1]
    where = f"layer {rec.names.get(module) or '(model)'!r} ({type(module).__name__})"
    reason = _too_small(module, inp) if inp is not None else None
    if reason is not None:
        return f"input shape {shape} is too small for this model: {where} {reason}; use a larger input"
    got = f" got input {list(inp.shape[1:])}" if inp is not None else ""
    return f"input shape {shape} does not fit the model: {where}{got}: {str(err).strip().splitlines()[0]}"


def print_summary(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str | None = None,
                  console: Any = None) -> Summary:
    """`summary` printed as a rich table (to `console`, default a new rich Console); returns the Summary."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    s = summary(model, input_shape, device)
    header, cells = s.table()
    table = Table(title=f"{type(model).__name__} on input {_fmt_shape(s.input_shape)}", box=box.SIMPLE_HEAD)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 3 else "right", no_wrap=i in (0, 2))
    for c in cells:
        table.add_row(*c)
    console = console or Console()
    console.print(table)
    for line in s.footer():
        console.print(line, highlight=False, markup=False)
    return s
