"""convscope: train convolutional networks and see inside them while they train.

The names below are the public API. They load on first use (PEP 562), so `import convscope` costs no
torch import: `convscope --help` and a script that only reads a saved run stay fast.

    import convscope
    learn = convscope.Learner(model, train_batches, valid_batches, cbs=[convscope.ActivationStats()])
    run = convscope.load_run("runs/20261127-014500-mnist")     # any finished run, in another process
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from convscope._version import __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "ActivationStats": "convscope.stats.activations",
    "ActivationStatsData": "convscope.runs.stats_data",
    "Callback": "convscope.train.callback",
    "ConfigError": "convscope.errors",
    "ConvscopeError": "convscope.errors",
    "ConvscopeWarning": "convscope.errors",
    "DataError": "convscope.errors",
    "Learner": "convscope.train.learner",
    "Recorder": "convscope.train.recorder",
    "Run": "convscope.runs.run",
    "RunError": "convscope.errors",
    "TensorBoard": "convscope.experiments.tensorboard",
    "TrainConfig": "convscope.config",
    "accuracy": "convscope.train.metrics",
    "load_run": "convscope.runs.run",
    "watch": "convscope.stats.watch",
}

__all__ = [  # the names of _EXPORTS, and the version (a test checks that the two lists agree)
    "ActivationStats",
    "ActivationStatsData",
    "Callback",
    "ConfigError",
    "ConvscopeError",
    "ConvscopeWarning",
    "DataError",
    "Learner",
    "Recorder",
    "Run",
    "RunError",
    "TensorBoard",
    "TrainConfig",
    "__version__",
    "accuracy",
    "load_run",
    "watch",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from convscope.config import TrainConfig
    from convscope.errors import ConfigError, ConvscopeError, ConvscopeWarning, DataError, RunError
    from convscope.experiments.tensorboard import TensorBoard
    from convscope.runs.run import Run, load_run
    from convscope.runs.stats_data import ActivationStatsData
    from convscope.stats.activations import ActivationStats
    from convscope.stats.watch import watch
    from convscope.train.callback import Callback
    from convscope.train.learner import Learner
    from convscope.train.metrics import accuracy
    from convscope.train.recorder import Recorder


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'convscope' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
