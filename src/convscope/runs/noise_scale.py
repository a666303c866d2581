"""noise_scale.npz: a run's gradient noise scale measurements, and B_simple over a span of them.

`convscope.stats.noise_scale.GradientNoiseScale` writes the file while training; the diagnosis reads it
back from a saved run, so the estimate that both use lives here, beside the file's name.
"""

from __future__ import annotations

import numpy as np

NOISE_SCALE_FILE = "noise_scale.npz"


def ratio_of_means(g2: np.ndarray, tr_sigma: np.ndarray) -> float:
    """mean(tr Sigma) / mean(|G|^2): B_simple over a set of measurements, NaN if mean |G|^2 <= 0 or empty."""
    g2, tr_sigma = np.asarray(g2, np.float64), np.asarray(tr_sigma, np.float64)
    if not len(g2) or not g2.mean() > 0:
        return float("nan")
    return float(tr_sigma.mean() / g2.mean())
