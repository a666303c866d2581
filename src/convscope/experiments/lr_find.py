"""The LR finder as a command runs it: the data and model of `convscope train`, several sweeps, a run folder.

Everything that can be wrong with the input is checked, and the sweeps are run, before the run folder
is made: a failed start leaves nothing behind. The sweep itself is `convscope.train.lr_finder`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from convscope.config import TrainConfig
from convscope.dist.devices import resolve_device
from convscope.errors import RunError
from convscope.experiments.setup import build_batches, build_model, default_run_name, versions
from convscope.runs.store import atomic_write_bytes, atomic_write_json, create_run_dir
from convscope.train.learner import Learner
from convscope.train.lr_finder import LRFindResult, check_sweep_args, lr_find


def find_lr(cfg: TrainConfig, start_lr: float, end_lr: float, num_it: int, repeats: int
            ) -> tuple[Path, LRFindResult]:
    """Sweep as `convscope lr-find` does and write the run folder; returns the folder and the result."""
    check_sweep_args(start_lr, end_lr, num_it, repeats)
    run_name = cfg.name or default_run_name(cfg) + "-lr-find"
    if (Path(cfg.out) / run_name).exists():  # fail before the sweeps, not after them
        raise RunError(f"run folder {Path(cfg.out) / run_name} already exists; choose another --name or --out")
    result, config = run_lr_find(cfg, start_lr, end_lr, num_it, repeats)
    run_dir = create_run_dir(cfg.out, run_name)
    _write_lr_find(run_dir, result, config)
    return run_dir, result


def run_lr_find(cfg: TrainConfig, start_lr: float, end_lr: float, num_it: int, repeats: int
                 ) -> tuple[LRFindResult, dict[str, Any]]:
    """Build the data, the model and a Learner as `convscope train` would, and sweep. Returns the result
    and the config to save."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # the same initial weights as `convscope train --seed`
    train_dl, valid_dl, info = build_batches(cfg, device)
    learn = Learner(build_model(cfg, info, device, valid_dl), train_dl, valid_dl, wd=cfg.wd, device=device)
    result = lr_find(learn, start_lr=start_lr, end_lr=end_lr, num_it=num_it, repeats=repeats, seed=cfg.seed)
    config = {**cfg.to_dict(), "command": "lr-find", "lr_find": result.settings, "data": info,
              "versions": versions(device)}
    return result, config


def _write_lr_find(run_dir: Path, result: LRFindResult, config: dict[str, Any]) -> None:
    """config.json, lr_find.json (every sweep, the suggestions, the recommendation) and lr_find.png."""
    atomic_write_json(run_dir / "config.json", config)
    atomic_write_json(run_dir / "lr_find.json", result.to_dict())
    buf = io.BytesIO()
    result.plot().savefig(buf, format="png", dpi=110)
    atomic_write_bytes(run_dir / "lr_find.png", buf.getvalue())
