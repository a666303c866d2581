"""Matplotlib figures from plain data (a run's arrays, an `ActivationStatsData`), with no run folder and no
training: the figures of report.html, of `learn.activation_stats.color_dim(...)` and of the LR finder.
Figures are made without pyplot, so nothing needs a display."""

from convscope.plots.activations import (
    color_dim,
    plot_dead,
    plot_grad_stats,
    plot_layer,
    plot_layer_stats,
    plot_loss,
    plot_overview,
)
from convscope.plots.schedules import plot_lr_find, plot_schedule

__all__ = [
    "color_dim",
    "plot_dead",
    "plot_grad_stats",
    "plot_layer",
    "plot_layer_stats",
    "plot_loss",
    "plot_lr_find",
    "plot_overview",
    "plot_schedule",
]
