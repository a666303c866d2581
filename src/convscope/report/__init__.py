"""Reading a run back as pictures: matplotlib figures and the self-contained report.html."""

from .html import render_report, write_report
from .plots import (
    color_dim,
    plot_dead,
    plot_grad_stats,
    plot_layer,
    plot_layer_stats,
    plot_loss,
    plot_overview,
)

__all__ = [
    "color_dim",
    "plot_dead",
    "plot_grad_stats",
    "plot_layer",
    "plot_layer_stats",
    "plot_loss",
    "plot_overview",
    "render_report",
    "write_report",
]
