"""Models named on the command line: `--model package.module:factory`, checked before any training.

The factory is a callable taking `in_channels` and `n_classes` as keyword arguments and returning an
`nn.Module` whose output on a batch `[N, C, H, W]` is `[N, n_classes]` logits. Its module is imported with
the current folder first on `sys.path` (as `python -m` does), so `--model mymodels:resnet` finds a
mymodels.py beside the user. Every way this can go wrong is one ConfigError line that names the factory.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from convscope.config import split_model_spec
from convscope.errors import ConfigError

__all__ = ["build_from_factory", "check_output", "load_factory"]


def _one_line(exc: BaseException) -> str:
    """'TypeName: message' on one line (a message may span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def current_folder_importable() -> Iterator[None]:
    """The current folder first on sys.path while the user's module is imported and called, as under `python -m`
    (a factory may import its helpers only when called)."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    importlib.invalidate_caches()  # a module file written after the last import must be seen
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def load_factory(spec: str) -> Callable[..., Any]:
    """Import `spec`'s module and return its factory; ConfigError when it cannot be imported, lacks the
    attribute, or names something that is not callable."""
    module_name, attr = split_model_spec(spec)
    with current_folder_importable():
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, SyntaxError, or whatever the module raises at import time
            missing = isinstance(exc, ModuleNotFoundError) and exc.name is not None and \
                (module_name == exc.name or module_name.startswith(exc.name + "."))
            hint = (f"put {module_name.replace('.', '/')}.py in the current folder or install its package" if missing
                    else f"the error is raised inside {module_name}: fix it there")
            raise ConfigError(f"model factory {spec!r}: cannot import module {module_name!r} ({_one_line(exc)}); "
                              f"{hint}") from None
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model factory {spec!r}: {where} has no attribute {part!r}; name a function "
                              f"defined in {module_name}") from None
        obj, where = getattr(obj, part), f"{where}.{part}"
    if not callable(obj):
        raise ConfigError(f"model factory {spec!r}: {where} is not callable (an object of type "
                          f"{type(obj).__name__}); name a function of in_channels and n_classes that returns an "
                          "nn.Module")
    return obj


def build_from_factory(spec: str, factory: Callable[..., Any], in_channels: int, n_classes: int) -> nn.Module:
    """`factory(in_channels=..., n_classes=...)`; ConfigError when it raises or returns no nn.Module."""
    call = f"{split_model_spec(spec)[1]}(in_channels={in_channels}, n_classes={n_classes})"
    with current_folder_importable():
        try:
            model = factory(in_channels=in_channels, n_classes=n_classes)
        except Exception as exc:
            raise ConfigError(f"model factory {spec!r} raised {_one_line(exc)} when called as {call}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned a {type(model).__name__} when called as {call}, "
                          "not a torch.nn.Module")
    return model


def check_output(model: nn.Module, input_shape: tuple[int, ...], n_classes: int, what: str) -> None:
    """One forward pass (eval mode, no grad) on a batch of two zero images of `input_shape`: the output must be
    [2, n_classes]. Two, not one: a BatchNorm1d head cannot take a batch of one in training mode, and an
    output that squeezes the batch away shows up only then. Leaves the model in training mode."""
    first = next(iter(model.parameters()), None)
    x = torch.zeros(2, *input_shape, device=first.device if first is not None else None)
    shape = list(x.shape)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:
        raise ConfigError(f"{what} fails on a batch of shape {shape}: {_one_line(exc)}") from None
    finally:
        model.train()
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{what} returns a {type(out).__name__} for a batch of shape {shape}; expected a tensor "
                          f"of logits [2, {n_classes}]")
    if list(out.shape) != [2, n_classes]:
        raise ConfigError(f"{what} gives output {list(out.shape)} for a batch of shape {shape}; expected "
                          f"[2, {n_classes}] (one logit per class)")
