"""Scope: convscope's statistics in a Lightning `Trainer.fit`, written as a convscope run folder.

    from convscope.integrations.lightning import Scope
    trainer = lightning.Trainer(max_epochs=3, precision="bf16-mixed", callbacks=[Scope("runs/lit")])
    trainer.fit(module, train_loader, val_loader)
    convscope report runs/lit            # or convscope.load_run("runs/lit").activation_stats

How Lightning's loop maps onto a convscope step (one step = one optimizer step):
- Gradient norms are read in `on_before_optimizer_step`: Lightning calls it after the whole accumulation
  window's backward passes and after a mixed-precision plugin has unscaled .grad, so the norms are those of
  the accumulated, unscaled gradient (the loss scale of "16-mixed" never shows in them).
- With `accumulate_grad_batches=k` the row's activations are those of the window's last micro-batch, and
  the step's loss in steps.npz is the mean of its k micro-batch losses.
- Validation and the sanity check run in eval mode without autograd: not recorded, as in watch().
- Under a DDP strategy every rank records (rows are combined over ranks, as convscope's own distributed
  training does: statistics of the global batch) and rank 0 alone writes the folder. With ddp_spawn the
  statistics live in the spawned processes: read them back with `convscope.load_run(run_dir)`.
- metrics.jsonl gets one row per training epoch: `epoch`, `train_loss` (the mean step loss), every metric
  logged to `trainer.callback_metrics` under its own name, and `valid_loss` / `accuracy` (the names the
  report and diagnosis read) copied from the logged metrics named by `valid_loss=` and `accuracy=`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from convscope.runs.stats_data import ActivationStatsData
from convscope.stats.watch import Watch


class Scope(Callback):
    def __init__(self, run_dir: str | Path, valid_loss: str = "val_loss", accuracy: str = "val_acc",
                 **watch_kwargs: Any) -> None:
        """`watch_kwargs` are `convscope.watch`'s settings (every, sample, with_hist, bins, modules, ...)."""
        self.run_dir = Path(run_dir)
        self.names = {"valid_loss": valid_loss, "accuracy": accuracy}
        self.watch_kwargs = watch_kwargs
        self.watch: Watch | None = None
        self._stepped = False
        self._loss: torch.Tensor | None = None  # this step's micro-batch losses, summed (each is loss / k)
        self._epoch_losses: list[torch.Tensor] = []

    @property
    def data(self) -> ActivationStatsData:
        if self.watch is None:
            raise RuntimeError("Scope has recorded nothing in this process: read the run with convscope.load_run")
        return self.watch.data

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.watch is not None:
            raise RuntimeError(f"this Scope already recorded a fit into {self.run_dir}; give the next fit a new "
                               "Scope with another run_dir")
        # Here the strategy has set up its process group, so the Watch knows its rank.
        plugin = trainer.precision_plugin
        config = {"source": "lightning", "model": type(pl_module).__name__, "precision": str(trainer.precision),
                  "accumulate_grad_batches": trainer.accumulate_grad_batches, "max_epochs": trainer.max_epochs,
                  "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                  "versions": {"lightning": lightning.__version__}}
        self.watch = Watch(pl_module, self.run_dir, config=config, scaler=getattr(plugin, "scaler", None),
                           **self.watch_kwargs)
        self.watch.__enter__()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self.watch is not None:
            self.watch.gradients_ready()
            self._stepped = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.watch is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss = loss if self._loss is None else self._loss + loss
        if not self._stepped:  # inside an accumulation window: the step goes on
            return
        values: dict[str, Any] = {"epoch": trainer.current_epoch}
        if trainer.optimizers:
            values["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.watch.step(self._loss, **values)
        if self._loss is not None:
            self._epoch_losses.append(self._loss)
        self._stepped, self._loss = False, None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.watch is None:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        if self._epoch_losses:
            row["train_loss"] = torch.stack(self._epoch_losses).mean().item()
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()
                  if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
        row.update(logged)
        row.update({ours: logged[theirs] for ours, theirs in self.names.items() if theirs in logged})
        self._epoch_losses = []
        self.watch.log(**row)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._close()  # keep what was recorded up to the failure

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    def _close(self) -> None:
        if self.watch is not None and self.watch.collector.hooks is not None:
            self.watch.close()
