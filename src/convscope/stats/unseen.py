"""Which activations the hooks cannot see: non-linearities applied as functions (`F.relu(self.conv(x))`).

Forward hooks sit on modules; `F.relu`, `torch.relu`, `x.relu()`, `F.gelu`... are not modules, so a model
written that way has statistics before its non-linearity and none after it, and nothing in the numbers
says so. One `torch.fx.symbolic_trace` of the model (no data runs through it) lists those calls and, for
each, the module whose output it consumes. Where tracing fails (data-dependent control flow, calls fx
cannot follow), the answer is "unknown", said as such, not an empty list.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

UNKNOWN = "*"  # the name given when the model could not be traced

_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.softplus, F.sigmoid, F.tanh, torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
    torch.selu, torch.celu, F.relu_, F.leaky_relu_, F.elu_,
}
_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
# Shape and pooling steps between a module and its activation: the activation still belongs to that module.
_PASS_THROUGH = {F.max_pool2d, F.max_pool1d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout, torch.flatten,
                 operator.getitem}
_PASS_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose"}


def functional_activations(model: nn.Module, layers: list[str]) -> list[tuple[str, str]]:
    """(module name, reason) for each activation applied as a function to a module's output.

    The name is the module whose output the function consumes (through pooling or reshaping in between),
    or '<input>'/'<expression>' when it consumes no module's output; (UNKNOWN, why) when the model
    cannot be traced. `layers` are the watched names: a reason says whether that module is watched."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, NotImplementedError...)
        return [(UNKNOWN, f"unknown: torch.fx could not trace the model ({type(e).__name__}), so activations "
                          "applied as functions cannot be listed")]
    found = []
    watched = set(layers)
    for node in graph.nodes:
        if (node.op == "call_function" and node.target in _FUNCTIONS) or \
           (node.op == "call_method" and node.target in _METHODS):
            name = getattr(node.target, "__name__", str(node.target))
            source = _source_module(node.args[0] if node.args else None)
            where = "watched" if source in watched else "not watched"
            found.append((source, f"functional {name} after it (no module to hook): its post-activation "
                                  f"values are not recorded; the module itself is {where}"))
    return found


def _source_module(arg: object) -> str:
    """The module whose output reaches `arg` through pass-through steps only."""
    while isinstance(arg, torch.fx.Node):
        if arg.op == "call_module":
            return str(arg.target)
        if arg.op == "placeholder":
            return "<input>"
        if (arg.op == "call_function" and arg.target in _PASS_THROUGH) or \
           (arg.op == "call_method" and arg.target in _PASS_METHODS):
            arg = arg.args[0] if arg.args else None
            continue
        break
    return "<expression>"
