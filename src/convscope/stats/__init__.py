"""Seeing inside while training: hooks, activation and gradient statistics, gradient noise scale."""

from convscope.runs.stats_data import ActivationStatsData  # what they record, as saved in stats.npz
from convscope.stats.activations import ActivationStats
from convscope.stats.hooks import Hook, Hooks, has_hooks, select_modules
from convscope.stats.noise_scale import GradientNoiseScale
from convscope.stats.watch import Watch, watch

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
