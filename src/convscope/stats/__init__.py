"""Seeing inside while training: hooks, activation and gradient statistics, gradient noise scale."""

from .activations import ActivationStats
from .data import ActivationStatsData
from .hooks import Hook, Hooks, has_hooks, select_modules
from .noise_scale import GradientNoiseScale
from .watch import Watch, watch

__all__ = [
    "ActivationStats",
    "ActivationStatsData",
    "GradientNoiseScale",
    "Hook",
    "Hooks",
    "Watch",
    "has_hooks",
    "select_modules",
    "watch",
]
