"""convscope: train convolutional networks and see inside them while they train."""

__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .errors import ConfigError, ConvscopeError, DataError, RunError  # noqa: E402
from .runs import Run, load_run  # noqa: E402
from .stats import ActivationStats, ActivationStatsData, watch  # noqa: E402
from .train import Callback, Learner, Recorder, accuracy  # noqa: E402

__all__ = [
    "ActivationStats",
    "ActivationStatsData",
    "Callback",
    "ConfigError",
    "ConvscopeError",
    "DataError",
    "Learner",
    "Recorder",
    "Run",
    "RunError",
    "TrainConfig",
    "__version__",
    "accuracy",
    "load_run",
    "watch",
]
