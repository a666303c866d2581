"""Seeing inside while training: hooks, activation and gradient statistics, gradient noise scale."""

from .activations import ActivationStats
from .data import ActivationStatsData
from .hooks import Hook, Hooks, has_hooks, select_modules
from .watch import Watch, watch

__all__ = [
    "ActivationStats",
    "ActivationStatsData",
    "Hook",
    "Hooks",
    "Watch",
    "has_hooks",
    "select_modules",
    "watch",
]
