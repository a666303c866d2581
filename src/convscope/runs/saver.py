"""RunSaver: the callback that writes a run directory while a Learner trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..train.callback import Callback
from .store import atomic_save_npz, atomic_write_json, atomic_write_jsonl


class RunSaver(Callback):
    """Writes config.json at the start, and metrics, steps and a checkpoint at every epoch end.

    Other callbacks that own run files (ActivationStats, ...) expose `save(run_dir)`; RunSaver calls it
    at the same flush points so that every file of the run describes the same moment.
    """

    order = 90  # after the Recorder has closed the epoch

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.config = config

    def before_fit(self) -> None:
        atomic_write_json(self.path / "config.json", self.config)

    def after_epoch(self) -> None:
        self.flush()
        self.save_checkpoint()

    def after_fit(self) -> None:
        self.flush()

    def flush(self) -> None:
        rec = self.learn.recorder
        atomic_write_jsonl(self.path / "metrics.jsonl", rec.epochs)
        atomic_save_npz(self.path / "steps.npz", rec.step_arrays())
        for cb in self.learn.cbs:
            save = getattr(cb, "save_to_run", None)
            if callable(save):
                save(self.path)

    def save_checkpoint(self) -> None:
        ckpt = self.path / "checkpoint"
        ckpt.mkdir(exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.learn.model.state_dict().items()}
        tmp = ckpt / ".model.safetensors.tmp"
        save_file(state, str(tmp))
        tmp.replace(ckpt / "model.safetensors")
        atomic_write_json(ckpt / "state.json", {"epoch": self.learn.epoch, "step": self.learn.train_iter})
