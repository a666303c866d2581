"""Checkpoints that resume a run exactly: weights, optimizer, data order, RNG streams, position.

Layout: <run>/checkpoint/ (newest) and <run>/checkpoint.1/ ... (older, `keep` in all), each holding
    model.safetensors      weights and buffers (BatchNorm running statistics included)
    optimizer.safetensors  the optimizer's tensors (Adam moments, step counts, ...)
    rng.safetensors        torch's RNG state(s) and the data order generator's states
    state.json             position (epoch, next batch, optimizer steps), optimizer hyper-parameters,
                           python/numpy RNG states; written last, so its presence marks a whole checkpoint
Nothing is unpickled when loading: tensors come from safetensors, everything else from JSON.
A new checkpoint is written under a temporary name and renamed into place, so a kill at any moment
leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from convscope.errors import RunError
from convscope.runs.store import atomic_write_json, read_json

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


def save_checkpoint(run_dir: str | Path, learn: Any, epoch: int, next_iter: int, keep: int = 2) -> Path:
    """Write a checkpoint from which training continues at batch `next_iter` of `epoch`."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_files(tmp, learn, epoch, next_iter)
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


def _write_files(tmp: Path, learn: Any, epoch: int, next_iter: int) -> None:
    """The checkpoint's four files, into the folder `tmp`; state.json last (it marks a whole checkpoint)."""
    _save_tensors({k: _cpu(v) for k, v in learn.model.state_dict().items()}, tmp / "model.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(learn.opt.state_dict()) if learn.opt is not None else ({}, None)
    _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = s
    data_state = getattr(learn.train_data, "state_dict", None)
    if callable(data_state):
        rng.update({f"data.{k}": v for k, v in data_state().items()})
    _save_tensors(rng, tmp / "rng.safetensors")
    np_state = np.random.get_state()
    py_state = random.getstate()
    atomic_write_json(tmp / "state.json", {
        "epoch": epoch, "iter": next_iter, "train_iter": learn.train_iter, "n_epochs": learn.n_epochs,
        "optimizer": opt_meta,
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    })


def _read(path: Path) -> Checkpoint:
    state = read_json(path / "state.json")
    problem = _state_problem(state)
    if problem:
        raise RunError(f"checkpoint {path}/state.json {problem}; an older one may remain in {path.name}.1")
    try:
        return Checkpoint(path, state, load_file(str(path / "model.safetensors")),
                          load_file(str(path / "optimizer.safetensors")), load_file(str(path / "rng.safetensors")))
    except Exception as exc:
        # SafetensorError mostly, but a damaged header can also surface as OSError, ValueError, TypeError,
        # OverflowError or MemoryError from the bindings: each means the same damaged file (no pickles run).
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise RunError(f"checkpoint {path} is damaged ({detail}); an older one may remain in {path.name}.1") from None


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
    return None


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The newest whole checkpoint of a run (falling back to older ones if the newest is damaged)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; pass the folder of the run to resume")
    candidates = sorted(run_dir.glob(f"{CHECKPOINT}*"), key=lambda p: (len(p.name), p.name))
    candidates = [p for p in candidates
                  if p.is_dir() and (p.name == CHECKPOINT or p.name[len(CHECKPOINT) + 1:].isdigit())]
    errors = []
    for path in candidates:
        if not (path / "state.json").exists():
            continue
        try:
            return _read(path)
        except RunError as exc:
            errors.append(str(exc))
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise RunError(f"{run_dir} has no usable checkpoint{detail}; it cannot be resumed")


def restore_model(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, refusing a checkpoint made for a differently shaped model with a clear message."""
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
    model.load_state_dict({k: v.to(own[k].device) for k, v in weights.items()})


def restore_learner(learn: Any, ckpt: Checkpoint) -> None:
    """Put weights, optimizer, RNG streams, data order and counters back as they were when saved."""
    restore_model(learn.model, ckpt.model, ckpt.path)
    try:
        _restore_state(learn, ckpt)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
        # Every value used here comes from the checkpoint's files: when one does not fit (a damaged or
        # hand-edited file, another convscope version), say so instead of showing torch's or numpy's traceback.
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise RunError(f"checkpoint {ckpt.path} cannot be restored ({detail}); it is damaged or was written by "
                       f"another convscope version, an older one may remain in {ckpt.path.name}.1") from None


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout.

    Checkpoints hold contiguous tensors, and `Optimizer.load_state_dict` keeps the layout it is given. A
    channels_last parameter would then get a contiguous exp_avg, and the fused AdamW kernel, which walks
    parameter and state in memory order, would pair the wrong elements.
    """
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _restore_state(learn: Any, ckpt: Checkpoint) -> None:
    if learn.opt is None:
        learn.create_opt()
    if ckpt.state.get("optimizer"):
        sd = _unflatten_optimizer(ckpt.optimizer, ckpt.state["optimizer"])
        if len(sd["param_groups"]) != len(learn.opt.param_groups):
            raise RunError(f"checkpoint {ckpt.path} was made with a different optimizer set-up")
        learn.opt.load_state_dict(sd)
        _match_param_layout(learn.opt)
    torch.set_rng_state(ckpt.rng["torch"])
    cuda = [ckpt.rng[k] for k in sorted(ckpt.rng) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    py = ckpt.state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = ckpt.state["numpy_rng"]
    np.random.set_state((npr[0], np.asarray(npr[1], dtype=np.uint32), npr[2], npr[3], npr[4]))
    data = {k[len("data."):]: v for k, v in ckpt.rng.items() if k.startswith("data.")}
    if data and hasattr(learn.train_data, "resume_epoch"):
        learn.train_data.resume_epoch(data, ckpt.iter)
        learn._skip_batches = 0
    else:  # a DataLoader: replay the epoch's batches up to the saved position and drop them
        learn._skip_batches = ckpt.iter
    learn.train_iter = ckpt.train_iter
