"""Changes to a built model that a finding's remedy can ask for, so that `convscope rerun --apply-remedies` can
check a remedy that no training setting expresses.

A wrong model factory (every weight zero, biases of -5, sigmoid activations, a softmax before
cross-entropy, a frozen body, dropout of 0.9, pixels fed as 0-255) cannot be fixed by a setting of
`convscope train`: the fix is a change to the user's code. The rerun proves that change right before the
user makes it: it builds the same model from the same factory and seed, applies the change to the built
module, and trains. The finding's remedy sentence says what to write in the code; TrainConfig.model_changes
records what the rerun did, in its config.json.

Each change is one key of TrainConfig.model_changes:
    init             "default": every submodule's own reset_parameters() (PyTorch's default initialisation)
    unfreeze         true: requires_grad on every parameter
    dropout          p: every dropout layer's p
    activation       "relu": every Sigmoid/Tanh/Hardtanh/Hardsigmoid module that is not the model's output
                     becomes nn.ReLU
    remove           [module names]: those modules become nn.Identity (e.g. a softmax before cross-entropy)
    normalize_input  module name: a BatchNorm without affine parameters in front of that (first) weight layer,
                     so that it sees its input at mean 0, std 1 whatever the pipeline fed it
"""

from __future__ import annotations

from typing import Any

from torch import nn

from convscope.config import MODEL_CHANGES, check_model_changes
from convscope.errors import ConfigError

__all__ = ["MODEL_CHANGES", "apply_model_changes", "check_model_changes"]

SATURATING = (nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def apply_model_changes(model: nn.Module, changes: dict[str, Any]) -> list[str]:
    """Apply `changes` to `model` in place (the order above); what was done, one line each. A module name that
    the model does not have is a ConfigError: a rerun must never train silently without its change."""
    check_model_changes(changes)
    done: list[str] = []
    if changes.get("init") == "default":
        reset = [m for m in model.modules() if callable(getattr(m, "reset_parameters", None))]
        for m in reset:
            m.reset_parameters()
        done.append(f"re-initialised {len(reset)} module(s) with their own reset_parameters()")
    if changes.get("unfreeze"):
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        model.requires_grad_(True)
        done.append(f"unfroze {len(frozen)} parameter(s)")
    if "dropout" in changes:
        drops = [m for m in model.modules() if isinstance(m, DROPOUTS)]
        for m in drops:
            m.p = float(changes["dropout"])
        done.append(f"set p = {changes['dropout']:g} in {len(drops)} dropout layer(s)")
    if changes.get("activation") == "relu":
        last = _last_module(model)
        names = [n for n, m in model.named_modules() if isinstance(m, SATURATING) and m is not last]
        for name in names:
            _replace(model, name, nn.ReLU())
        done.append(f"replaced {len(names)} saturating activation(s) with nn.ReLU")
    for name in changes.get("remove", []):
        _module(model, name)
        _replace(model, name, nn.Identity())
        done.append(f"removed {name} (now nn.Identity)")
    if "normalize_input" in changes:
        name = changes["normalize_input"]
        layer = _module(model, name)
        channels = getattr(layer, "in_channels", None) or getattr(layer, "in_features", None)
        if not isinstance(channels, int):
            raise ConfigError(f"normalize_input: {name} is a {type(layer).__name__}, not a conv or linear layer")
        norm = nn.BatchNorm2d(channels, affine=False) if isinstance(layer, nn.Conv2d) else \
            nn.BatchNorm1d(channels, affine=False)
        _replace(model, name, nn.Sequential(norm, layer))
        done.append(f"normalised the input of {name} (BatchNorm without affine parameters in front of it)")
    return done


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"the model has no module {name!r} to change; the run's model differs from the "
                          "one its findings were about") from None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = _module(model, parent_name) if parent_name else model
    setattr(parent, child, new)


def _last_module(model: nn.Module) -> nn.Module | None:
    """The module registered last among the leaves: the output layer of a Sequential-style model."""
    leaves = [m for m in model.modules() if not list(m.children())]
    return leaves[-1] if leaves else None
