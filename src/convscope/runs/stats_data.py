"""ActivationStatsData: recorded statistics as numpy arrays, saved as stats.npz and loaded back.

This is what `learn.activation_stats` and `load_run(path).activation_stats` both expose, so plots,
diagnosis and reports work the same on a live learner and on a run finished in another process.
Arrays are indexed [recorded step, layer] (and [..., bin] for histograms).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from convscope.errors import RunError
from convscope.runs.store import atomic_save_npz, read_npz

# absent from files written by older versions
_OPTIONAL = ("kinds", "ran", "frozen", "unseen", "interval", "negative", "abs_near_zero")


@dataclass
class ActivationStatsData:
    layers: list[str]
    steps: np.ndarray  # int64 [S]: optimizer step (0-based) at which each row was recorded
    mean: np.ndarray  # float [S, L]
    std: np.ndarray
    near_zero: np.ndarray  # share of values <= 0.05
    dead: np.ndarray  # share of channels <= 0 over the whole batch
    hist: np.ndarray  # float32 [S, L, bins] (empty bins axis when histograms were off)
    hist_range: np.ndarray  # float [L, 2]: (lo, hi) of each layer's histogram
    grad_norm: np.ndarray  # float [S, L]: L2 norm of the layer's own parameter gradients (NaN: none)
    update_ratio: np.ndarray  # float [S, L]: |weights after step - before| / |before| (NaN: none)
    every: int = 1  # final recording interval in steps (doubles when the row cap is reached)
    kinds: list[str] = field(default_factory=list)  # module class of each layer ('Conv2d', 'ReLU', ...)
    # bool [S, L]: the layer ran (a training forward pass) in that row's step. Where it did not (a branch
    # not taken), its statistics are NaN: "did not run", not "broken". Files written before it: isfinite(mean).
    ran: np.ndarray | None = None
    # bool [S, L]: all the layer's parameters were frozen (requires_grad False) at that step, which is
    # why its grad_norm and update_ratio are NaN there. Files written before it: all False.
    frozen: np.ndarray | None = None
    # (name, reason) for what the statistics could not see: watched layers that never ran in a recorded
    # step, and activations applied as functions (F.relu(conv(x)): no module to hook) with the module whose
    # output they consume; ('*', 'unknown: ...') when the model could not be traced to find them.
    unseen: list[tuple[str, str]] = field(default_factory=list)
    # How every="auto" chose the interval (stats/interval.py): row_ms, step_ms, budget, every. Empty when the
    # interval was given, or the run ended before it was chosen.
    interval: dict[str, float] = field(default_factory=dict)
    # float [S, L], beside fastai's near_zero (which counts every negative value too, so a healthy conv or
    # BatchNorm output reads 50-75% "near zero"): the share of values below 0 (what a ReLU after the layer
    # zeroes) and the share actually near zero, |x| <= 0.05. abs_near_zero is NaN where the layer's histogram
    # range has no bin edge at -0.05 and the layer had negative values (stats/compute.py). None: a file
    # written before they were recorded.
    negative: np.ndarray | None = None
    abs_near_zero: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.layers = [str(n) for n in self.layers]
        self.kinds = [str(k) for k in self.kinds] or [""] * len(self.layers)
        shape = np.shape(self.mean)
        self.ran = np.isfinite(self.mean) if self.ran is None else np.asarray(self.ran, dtype=bool)
        self.frozen = np.zeros(shape, dtype=bool) if self.frozen is None else np.asarray(self.frozen, dtype=bool)
        self.unseen = [(str(name), str(reason)) for name, reason in self.unseen]

    @property
    def never_ran(self) -> list[str]:
        """Layers that ran in none of the recorded steps."""
        return [name for name, ran in zip(self.layers, self.ran.any(axis=0)) if not ran] if self.n_steps else []

    # ----------------------------------------------------------------- access
    def index(self, layer: str | int) -> int:
        if isinstance(layer, (int, np.integer)):
            if not -len(self.layers) <= layer < len(self.layers):
                raise IndexError(f"layer index {layer} out of range for {len(self.layers)} layers")
            return int(layer) % len(self.layers)
        try:
            return self.layers.index(layer)
        except ValueError:
            raise KeyError(f"no statistics for layer {layer!r}; recorded layers: {', '.join(self.layers)}") from None

    def layer(self, layer: str | int) -> dict[str, np.ndarray]:
        """All series of one layer: {'mean': [S], 'std': [S], ..., 'hist': [S, bins]}."""
        i = self.index(layer)
        return {"steps": self.steps, "mean": self.mean[:, i], "std": self.std[:, i],
                "near_zero": self.near_zero[:, i], "dead": self.dead[:, i], "hist": self.hist[:, i],
                "grad_norm": self.grad_norm[:, i], "update_ratio": self.update_ratio[:, i],
                "ran": self.ran[:, i], "frozen": self.frozen[:, i], "hist_range": self.hist_range[i],
                **{name: getattr(self, name)[:, i] for name in ("negative", "abs_near_zero")
                   if getattr(self, name) is not None}}

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def bins(self) -> int:
        return self.hist.shape[-1] if self.hist.ndim == 3 else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (lists), e.g. for JSON."""
        return {f.name: (getattr(self, f.name).tolist() if isinstance(getattr(self, f.name), np.ndarray)
                         else getattr(self, f.name)) for f in fields(self)}

    # ----------------------------------------------------------------- plots
    # (convscope.plots draws them; matplotlib loads only when a figure is asked for)
    def plot_layer_stats(self, layer: str | int):
        from convscope.plots.activations import plot_layer_stats

        return plot_layer_stats(self, layer)

    def color_dim(self, layer: str | int):
        from convscope.plots.activations import color_dim

        return color_dim(self, layer)

    def plot_dead(self, layer: str | int):
        from convscope.plots.activations import plot_dead

        return plot_dead(self, layer)

    def _repr_html_(self) -> str:
        """Jupyter shows the statistics as the all-layer figure and each layer's last row (runs/display.py)."""
        from convscope.runs.display import stats_html

        return stats_html(self)

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}
        arrays["layers"] = np.asarray(self.layers, dtype=str)
        arrays["kinds"] = np.asarray(self.kinds, dtype=str)
        arrays["unseen"] = np.asarray(self.unseen, dtype=str).reshape(-1, 2)
        arrays["interval"] = np.asarray(json.dumps(self.interval))
        atomic_save_npz(Path(path), arrays)

    @classmethod
    def load(cls, path: str | Path) -> ActivationStatsData:
        arrays = read_npz(Path(path))
        missing = [f.name for f in fields(cls) if f.name not in arrays and f.name not in _OPTIONAL]
        if missing:
            raise RunError(f"{path} lacks {', '.join(missing)}; it was not written by convscope's ActivationStats")
        # Check every array's kind and shape before use: a damaged file must fail here with its name, not
        # later inside a plot or a diagnosis rule with a numpy traceback.
        for name in ("layers", "kinds"):
            if name in arrays and (arrays[name].ndim != 1 or arrays[name].dtype.kind != "U"):
                raise RunError(f"{path}: {name} is not a list of names; the file is damaged")
        every = arrays["every"]
        if every.size != 1 or every.dtype.kind not in "iu" or int(every.reshape(-1)[0]) < 1:
            raise RunError(f"{path}: every is not one whole number >= 1; the file is damaged")
        n_layers = len(arrays["layers"])
        if "kinds" in arrays and len(arrays["kinds"]) not in (0, n_layers):
            raise RunError(f"{path}: kinds has {len(arrays['kinds'])} names for {n_layers} layers; the file is damaged")
        steps = arrays["steps"]
        if steps.ndim != 1 or steps.dtype.kind not in "iu":
            raise RunError(f"{path}: steps is not a list of whole numbers; the file is damaged")
        n = len(steps)
        expected = {name: (n, n_layers) for name in ("mean", "std", "near_zero", "dead", "grad_norm", "update_ratio")}
        expected["hist_range"] = (n_layers, 2)
        expected.update({name: (n, n_layers) for name in ("negative", "abs_near_zero") if name in arrays})
        for name, shape in expected.items():
            if arrays[name].shape != shape or arrays[name].dtype.kind not in "iuf":
                raise RunError(f"{path}: {name} has shape {arrays[name].shape} {arrays[name].dtype}, expected "
                               f"{shape} numbers; the file is damaged")
        hist = arrays["hist"]
        if hist.ndim != 3 or hist.shape[:2] != (n, n_layers) or hist.dtype.kind not in "iuf":
            raise RunError(f"{path}: hist has shape {hist.shape} {hist.dtype}, expected ({n}, {n_layers}, bins) "
                           "numbers; the file is damaged")
        for name in ("ran", "frozen"):
            if name in arrays and (arrays[name].shape != (n, n_layers) or arrays[name].dtype.kind != "b"):
                raise RunError(f"{path}: {name} has shape {arrays[name].shape} {arrays[name].dtype}, expected "
                               f"{(n, n_layers)} booleans; the file is damaged")
        unseen = arrays.get("unseen", np.zeros((0, 2), dtype=str))
        if unseen.ndim != 2 or unseen.shape[1] != 2 or (unseen.size and unseen.dtype.kind != "U"):
            raise RunError(f"{path}: unseen is not a list of (name, reason) pairs; the file is damaged")
        kwargs = {f.name: arrays[f.name] for f in fields(cls) if f.name in arrays}
        kwargs["unseen"] = [(str(a), str(b)) for a, b in unseen]
        kwargs["layers"] = [str(s) for s in arrays["layers"]]
        kwargs["kinds"] = [str(s) for s in arrays.get("kinds", [])]
        kwargs["every"] = int(every.reshape(-1)[0])
        kwargs["interval"] = _interval(path, arrays.get("interval"))
        return cls(**kwargs)


def _interval(path: Path, array: np.ndarray | None) -> dict[str, float]:
    if array is None:
        return {}
    try:
        interval = json.loads(str(array.reshape(-1)[0])) if array.size == 1 and array.dtype.kind == "U" else None
    except json.JSONDecodeError:
        interval = None
    if not isinstance(interval, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval.values()):
        raise RunError(f"{path}: interval is not a JSON object of numbers; the file is damaged")
    return interval
