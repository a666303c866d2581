"""Forward/backward hooks as context managers, and which modules to watch by default.

A hook left on a model after training keeps costing time and memory, and a crash inside `fit` is exactly
when that happens; so hooks here are only ever used through `with` blocks or removed in `finally`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from convscope.errors import ConfigError

# Activation functions have no parameters, so "modules with parameters" (fastai's default) misses the
# statistics after the non-linearity, where dead units actually show.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    # Not activations inside a network, but a model that ends in one feeds probabilities to a cross-entropy
    # loss (softmax applied twice): watching it lets the diagnosis say so (rules.bounded_outputs).
    nn.Softmax, nn.Softmin,
    # Dropout: its zeros while training show the share it drops (rules.dropout_high).
    nn.Dropout, nn.Dropout2d,
)

HookFn = Callable[[nn.Module, Any, Any], None]


class Hook:
    """One forward (or backward) hook on one module, removed on `remove()` or at the end of a `with`."""

    def __init__(self, module: nn.Module, fn: HookFn, forward: bool = True) -> None:
        self.module = module
        register = module.register_forward_hook if forward else module.register_full_backward_hook
        self.handle = register(fn)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Hooks:
    """The same hook function on several modules; `fn(index, module, inputs, output)`.

    The bound hook functions are made once; `register()` and `remove()` put them on and take them off the
    modules as often as needed (a forward hook, even one that returns at once, costs every call of its
    module a few microseconds: the StatsCollector keeps its hooks on for the recorded steps only)."""

    def __init__(self, modules: Sequence[nn.Module], fn: Callable[[int, nn.Module, Any, Any], None],
                 forward: bool = True, traced: Callable[[int, nn.Module, Any], None] | None = None,
                 gate: Any = None, register: bool = True) -> None:
        """`traced(index, module, output)`, if given, is what runs instead of `fn` inside a graph that
        torch.compile traces (see _bind); with it, `gate.recording` False says `fn` would do nothing now."""
        self.forward = forward
        self._bound = [(module, _bind(fn, i, traced, gate)) for i, module in enumerate(modules)]
        self.hooks: list[Hook] = []
        if register:
            self.register()

    @property
    def registered(self) -> bool:
        return bool(self.hooks)

    def register(self) -> None:
        if self.hooks:
            return
        try:
            for module, hook in self._bound:
                self.hooks.append(Hook(module, hook, self.forward))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def __len__(self) -> int:
        return len(self._bound)

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _bind(fn: Callable[[int, nn.Module, Any, Any], None], index: int,
          traced: Callable[[int, nn.Module, Any], None] | None = None, gate: Any = None) -> HookFn:
    def call(module: nn.Module, inputs: Any, output: Any) -> None:
        fn(index, module, inputs, output)

    # Around a torch.compile'd model, dynamo would trace into `fn` and guard on the collector's state (the
    # open row's slot, changing every step), recompiling until its limit. So `fn` always runs eagerly...
    eager = torch._dynamo.disable(call, recursive=True)
    if traced is None:
        return eager  # ...at the price of a graph break at each hooked module

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        # ...or, given `traced` (written to be traced: it reads only state that is the same for a whole
        # step), that is what a compiled graph runs, and the eager `fn` runs only outside compiled code.
        if torch.compiler.is_compiling():
            traced(index, module, output)
        elif gate is None or gate.recording:  # read inline: the disable wrapper costs ~5 us per call
            eager(module, inputs, output)

    # Called from eager code (a graph break elsewhere in the user's model), the hook is no frame of its own
    # for dynamo to compile (it would, once per output rank, until its recompile limit): skip it there; traced
    # from a compiled frame it is still inlined.
    torch._dynamo.eval_frame.skip_code(hook.__code__)
    return hook


def has_hooks(model: nn.Module) -> bool:
    """True if any module of `model` still has a forward or backward hook registered."""
    return any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())


def select_modules(
    model: nn.Module,
    modules: Iterable[str | type[nn.Module] | nn.Module] | str | None = None,
) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs to watch, in forward-definition order.

    Default: every leaf module with parameters, plus activation modules. Otherwise `modules` may mix
    name patterns ('conv*.conv', fnmatch), module types (nn.Conv2d) and module objects.
    """
    named = [(name, m) for name, m in model.named_modules() if name]
    if modules is None:
        chosen = [(n, m) for n, m in named if not list(m.children())
                  and (any(True for _ in m.parameters(recurse=False)) or isinstance(m, ACTIVATIONS))]
        if not chosen:
            raise ConfigError("the model has no module with parameters or activation to watch")
        return chosen
    if isinstance(modules, str):
        modules = [modules]
    chosen = []
    for n, m in named:
        for sel in modules:
            if (isinstance(sel, str) and fnmatch.fnmatchcase(n, sel)) or \
               (isinstance(sel, type) and isinstance(m, sel)) or sel is m:
                chosen.append((n, m))
                break
    if not chosen:
        raise ConfigError(f"no module matches {list(modules)!r}; names look like {[n for n, _ in named[:4]]}")
    return chosen
