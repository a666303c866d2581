"""Checkpoints that resume a run exactly: weights, optimizer, data order, RNG streams, position.

Layout: <run>/checkpoint/ (newest) and <run>/checkpoint.1/ ... (older, `keep` in all), each holding
    model.safetensors      weights and buffers (BatchNorm running statistics included)
    optimizer.safetensors  the optimizer's tensors (Adam moments, step counts, ...)
    rng.safetensors        torch's RNG state(s) and the data order generator's states
    state.json             position (epoch, next batch, optimizer steps), optimizer hyper-parameters,
                           python/numpy RNG states, the fp16 loss scaler's state (scale, growth tracker);
                           written last, so its presence marks a whole checkpoint
Nothing is unpickled when loading: tensors come from safetensors, everything else from JSON.
A new checkpoint is written under a temporary name and renamed into place, so a kill at any moment
leaves the previous checkpoint whole.

What is saved is a `Learner.state_dict()` taken inside a fit; `Checkpoint.learner_state()` gives it back
for `Learner.load_state_dict`, and `restore` does both checks and the load. This module knows the
state's keys, not the Learner.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from convscope.errors import ConvscopeError, ConvscopeWarning, RunError
from convscope.runs.store import atomic_write_json, read_json, read_npz

CHECKPOINT = "checkpoint"


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def iter(self) -> int:
        return int(self.state["iter"])

    @property
    def train_iter(self) -> int:
        return int(self.state["train_iter"])

    def learner_state(self) -> dict[str, Any]:
        """The state as `Learner.state_dict()` returned it when it was saved."""
        py, npr = self.state["python_rng"], self.state["numpy_rng"]
        opt = self.state.get("optimizer")
        data = {k[len("data."):]: v for k, v in self.rng.items() if k.startswith("data.")}
        return {
            "model": self.model,
            "optimizer": _unflatten_optimizer(self.optimizer, opt) if opt else None,
            "epoch": self.epoch, "batch": self.iter, "train_iter": self.train_iter,
            "n_epochs": self.state.get("n_epochs", 0),
            "rng": {"torch": self.rng["torch"],
                    "cuda": [self.rng[k] for k in sorted(self.rng) if k.startswith("cuda.")],
                    "python": (py[0], tuple(py[1]), py[2]),
                    "numpy": (npr[0], np.asarray(npr[1], dtype=np.uint32), npr[2], npr[3], npr[4])},
            "data": data or None,
            "scaler": self.state.get("scaler"),  # None: not an fp16 run (or a checkpoint from before fp16)
        }


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, other = {}, {}
    for idx, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = _cpu(value)
            else:
                other[f"{idx}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "other_state": other}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["other_state"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, with its I/O failures (disk full, read-only, ...) raised as the OSError they
    are: safetensors wraps them in SafetensorError text, which callers could not tell from a bug."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` (a `Learner.state_dict()` taken inside a fit) as the run's newest checkpoint."""
    if state.get("epoch") is None:
        raise ValueError("a checkpoint needs a state taken inside a fit (it has no position)")
    run_dir = Path(run_dir)
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_files(tmp, state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full) leaves no half checkpoint behind
        raise
    # Rotate: checkpoint.(keep-1) is dropped, checkpoint.i -> checkpoint.(i+1), checkpoint -> checkpoint.1.
    shutil.rmtree(run_dir / f"{CHECKPOINT}.{keep - 1}", ignore_errors=True) if keep > 1 else None
    for i in range(keep - 2, 0, -1):
        src = run_dir / f"{CHECKPOINT}.{i}"
        if src.exists():
            src.rename(run_dir / f"{CHECKPOINT}.{i + 1}")
    current = run_dir / CHECKPOINT
    if current.exists():
        if keep > 1:
            current.rename(run_dir / f"{CHECKPOINT}.1")
        else:
            shutil.rmtree(current)
    tmp.rename(current)
    return current


def _write_files(tmp: Path, state: dict[str, Any]) -> None:
    """The checkpoint's four files, into the folder `tmp`; state.json last (it marks a whole checkpoint)."""
    _save_tensors({k: _cpu(v) for k, v in state["model"].items()}, tmp / "model.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(state["optimizer"]) if state["optimizer"] is not None else ({}, None)
    _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"torch": state["rng"]["torch"], **{f"cuda.{i}": s for i, s in enumerate(state["rng"]["cuda"])}}
    rng.update({f"data.{k}": _cpu(v) for k, v in (state["data"] or {}).items()})
    _save_tensors(rng, tmp / "rng.safetensors")
    np_state = state["rng"]["numpy"]
    py_state = state["rng"]["python"]
    atomic_write_json(tmp / "state.json", {
        "epoch": state["epoch"], "iter": state["batch"], "train_iter": state["train_iter"],
        "n_epochs": state["n_epochs"], "optimizer": opt_meta,
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "scaler": state.get("scaler"),  # plain numbers (GradScaler.state_dict), exact in JSON
    })


def _read(path: Path) -> Checkpoint:
    state = read_json(path / "state.json")
    problem = _state_problem(state)
    if problem:
        raise RunError(f"checkpoint {path}/state.json {problem}")
    try:
        ckpt = Checkpoint(path, state, load_file(str(path / "model.safetensors")),
                          load_file(str(path / "optimizer.safetensors")), load_file(str(path / "rng.safetensors")))
    except Exception as exc:
        # SafetensorError mostly, but a damaged header can also surface as OSError, ValueError, TypeError,
        # OverflowError or MemoryError from the bindings: each means the same damaged file (no pickles run).
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise RunError(f"checkpoint {path} is damaged ({detail})") from None
    bad = next((name for name, t in ckpt.model.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:  # a diverged run's weights: the NaN guard never checkpoints them, so this is damage
        raise RunError(f"checkpoint {path}/model.safetensors holds NaN or Inf values in {bad}")
    return ckpt


def _state_problem(state: Any) -> str | None:
    """What is wrong with a state.json's content (None: usable), so a resume fails here, not mid-restore."""
    if not isinstance(state, dict):
        return "is not a JSON object"
    for key in ("epoch", "iter", "train_iter"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 0:
            return f"has no whole number >= 0 for {key!r}"
    py, npr = state.get("python_rng"), state.get("numpy_rng")
    if not (isinstance(py, list) and len(py) == 3 and isinstance(py[1], list)):
        return "has no usable python_rng"
    if not (isinstance(npr, list) and len(npr) == 5 and isinstance(npr[1], list)):
        return "has no usable numpy_rng"
    if state.get("optimizer") is not None and not isinstance(state["optimizer"], dict):
        return "has an optimizer entry that is not a JSON object"
    scaler = state.get("scaler")
    if scaler is not None and not (isinstance(scaler, dict) and isinstance(scaler.get("scale"), (int, float))
                                   and isinstance(scaler.get("_growth_tracker"), int)):
        return "has a loss scaler entry without a scale and a growth tracker"
    return None


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint folders that hold a state.json, newest first (checkpoint, checkpoint.1, ...)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; pass the folder of the run to resume")
    found = sorted(run_dir.glob(f"{CHECKPOINT}*"), key=lambda p: (len(p.name), p.name))
    return [p for p in found if p.is_dir() and (p.name == CHECKPOINT or p.name[len(CHECKPOINT) + 1:].isdigit())
            and (p / "state.json").exists()]


def no_usable_checkpoint(run_dir: str | Path, errors: list[str]) -> RunError:
    detail = f" ({'; '.join(errors)})" if errors else ""
    return RunError(f"{run_dir} has no usable checkpoint{detail}; it cannot be resumed")


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The newest whole checkpoint of a run (falling back to older ones if the newest is damaged)."""
    errors = []
    for path in checkpoint_folders(run_dir):
        try:
            return _read(path)
        except RunError as exc:
            errors.append(str(exc))
    raise no_usable_checkpoint(run_dir, errors)


def check_position(ckpt: Checkpoint, n_iter: int, total_steps: int) -> None:
    """Refuse a checkpoint whose position cannot be a moment of a fit of `total_steps` steps over `n_iter`
    batches per epoch: a hand-edited or damaged state.json would else resume at a wrong place in the
    schedule and the data order, and "finish" a different run without a word."""
    epoch, batch, steps = ckpt.epoch, ckpt.iter, ckpt.train_iter
    n_epochs = -(-total_steps // n_iter)
    done = min(epoch * n_iter + batch, total_steps)  # a fractional last epoch ends before its n_iter batches
    if batch > n_iter or epoch > n_epochs or (epoch == n_epochs and batch) or steps != done:
        raise RunError(f"checkpoint {ckpt.path}/state.json is at epoch {epoch + 1}, batch {batch}, step {steps}, "
                       f"which does not fit this run ({n_iter} batches per epoch, {total_steps} steps in all): "
                       "the file is damaged or from another run")


def resume_learner(learn: Any, run_dir: str | Path, n_iter: int, total_steps: int) -> Checkpoint:
    """Restore the newest checkpoint that loads, fits the run's schedule and restores into `learn`.

    A newer one that does not (damaged, or hand-edited) is skipped with a warning that says which steps
    are trained again. A model of other settings is refused at once: an older checkpoint would not fit it
    either, and the fix is the user's.
    """
    errors: list[str] = []
    for path in checkpoint_folders(run_dir):
        try:
            ckpt = _read(path)
        except RunError as exc:
            errors.append(str(exc))
            continue
        check_fits(learn.model, ckpt.model, ckpt.path)
        try:
            check_position(ckpt, n_iter, total_steps)
            restore(learn, ckpt)
        except RunError as exc:
            errors.append(str(exc))
            continue
        if errors:
            warnings.warn(f"{'; '.join(errors)}; resuming from the older {ckpt.path} (after step {ckpt.train_iter})"
                          f"{_trained_again(Path(run_dir), ckpt.train_iter)}", ConvscopeWarning, stacklevel=2)
        return ckpt
    raise no_usable_checkpoint(run_dir, errors)


def _trained_again(run_dir: Path, train_iter: int) -> str:
    """', steps A to B are trained again': the recorded steps past the older checkpoint, as far as
    steps.npz tells (nothing if it cannot)."""
    try:
        steps = read_npz(run_dir / "steps.npz").get("step")
        last = int(steps.max()) + 1 if steps is not None and steps.size and steps.dtype.kind in "iu" else train_iter
    except (RunError, ValueError):
        return ""
    if last <= train_iter:
        return ""
    return f", so step{'s' if last > train_iter + 1 else ''} {train_iter + 1}" + (
        f" to {last}" if last > train_iter + 1 else "") + " are trained again"


def check_fits(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse, with a clear message, weights saved from a differently shaped model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise RunError(f"checkpoint {source} does not fit this model (missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}); resume with the model settings the run was started with")
    for name, tensor in own.items():
        if tensor.shape != weights[name].shape:
            raise RunError(f"checkpoint {source} does not fit this model: {name} has shape "
                           f"{tuple(weights[name].shape)} there and {tuple(tensor.shape)} here")


def restore(learn: Any, ckpt: Checkpoint) -> None:
    """`learn.load_state_dict` from the checkpoint, so that its next fit continues the run: a checkpoint
    made for another model, or one whose values do not fit (a damaged or hand-edited file, another
    convscope version), is refused with the checkpoint named."""
    check_fits(learn.model, ckpt.model, ckpt.path)
    try:
        learn.load_state_dict(ckpt.learner_state(), run_dir=ckpt.path.parent)
    except ConvscopeError as exc:
        raise RunError(f"checkpoint {ckpt.path} was made with a different set-up ({exc})") from None
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise RunError(f"checkpoint {ckpt.path} cannot be restored ({detail}); it is damaged or was written by "
                       "another convscope version") from None
