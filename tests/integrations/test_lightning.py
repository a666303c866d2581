"""convscope.integrations.lightning.Scope in a real Lightning Trainer.fit on real MNIST (CPU).

Every recorded number is checked against a second, plain callback that reads the same moments itself:
each watched module's last training-mode output before the optimizer step (our own forward hooks) and
`torch.linalg.vector_norm` of the .grads in on_before_optimizer_step (after Lightning's unscale)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import convscope
from convscope.stats import has_hooks

if os.environ.get("CI", "").strip().lower() in ("true", "1"):
    import lightning  # CI installs the extra: a missing package fails the run instead of skipping it
else:
    lightning = pytest.importorskip("lightning")

from convscope.integrations.lightning import Scope  # noqa: E402 - after the import that may skip

from ._edges import assert_near_zero_share  # noqa: E402
from ._reference import StepRecord, check_rows  # noqa: E402

BS, STEPS_PER_EPOCH, EPOCHS = 32, 6, 2


class Net(lightning.LightningModule):
    """A user's LightningModule: conv layers with nn.ReLU modules, validation logging val_loss and val_acc."""

    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.net = nn.Sequential(nn.Conv2d(1, 8, 5, 2, 2), norm(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), norm(16),
                                 nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
        self.step_losses: list[float] = []  # every training_step's loss, for the steps.npz check

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.step_losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Reference(lightning.Callback):
    """What Scope should record, read independently (_reference.py)."""

    def __init__(self, layers: list[str]) -> None:
        self.layers, self.record = layers, StepRecord()

    def on_fit_start(self, trainer, pl_module):
        self.record.attach(pl_module, self.layers)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.record.end_step(pl_module)

    def on_fit_end(self, trainer, pl_module):
        self.record.detach()


@pytest.fixture(scope="module")
def loaders(mnist_tensors):
    x, y, xt, yt = mnist_tensors
    n = BS * STEPS_PER_EPOCH * 2  # room for two micro-batches per step
    train = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=BS, shuffle=False)
    valid = DataLoader(TensorDataset(xt[:256], yt[:256]), batch_size=128)
    return train, valid


def layers_of(module: nn.Module) -> list[str]:
    from convscope.stats.hooks import select_modules

    return [name for name, _ in select_modules(module)]


def fit(module, loaders, tmp_path, *, precision="32-true", accumulate=1, limit=STEPS_PER_EPOCH, plugins=None,
        **scope_kwargs):
    scope = Scope(tmp_path / "run", every=1, sample=None, **scope_kwargs)
    ref = Reference(layers_of(module))
    settings = {"plugins": plugins} if plugins else {"precision": precision}
    trainer = lightning.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, **settings,
                                accumulate_grad_batches=accumulate, limit_train_batches=limit * accumulate,
                                callbacks=[ref, scope], logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1)
    trainer.fit(module, *loaders)
    return trainer, scope, ref


@pytest.fixture(scope="module")
def bf16_run(loaders, tmp_path_factory):
    """One bf16-mixed fit for the tests that read its run: (module, trainer, reference, run folder)."""
    tmp_path = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    module = Net()
    trainer, _, ref = fit(module, loaders, tmp_path, precision="bf16-mixed")
    return module, trainer, ref, tmp_path / "run"


def test_a_bf16_mixed_lightning_fit_writes_a_run_whose_rows_are_its_optimizer_steps(bf16_run):
    module, trainer, ref, run_dir = bf16_run
    n_steps = EPOCHS * STEPS_PER_EPOCH
    assert trainer.global_step == n_steps
    assert not has_hooks(module)
    run = convscope.load_run(run_dir)
    data = run.activation_stats
    check_rows(data, ref.record, n_steps)
    np.testing.assert_allclose(run.steps["loss"], module.step_losses, rtol=1e-6)
    assert list(run.steps["epoch"]) == [0] * STEPS_PER_EPOCH + [1] * STEPS_PER_EPOCH
    np.testing.assert_allclose(run.steps["lr"], 0.05)
    assert [m["epoch"] for m in run.metrics] == [0, 1]
    last = run.metrics[-1]
    assert last["accuracy"] == last["val_acc"] and last["valid_loss"] == last["val_loss"]
    assert last["train_loss"] == pytest.approx(np.mean(module.step_losses[STEPS_PER_EPOCH:]), rel=1e-5)
    assert run.config["source"] == "lightning" and run.config["precision"] == "bf16-mixed"


def test_gradient_accumulation_rows_hold_the_last_micro_batch_and_the_accumulated_gradient(loaders, tmp_path):
    torch.manual_seed(0)
    module = Net()
    trainer, scope, ref = fit(module, loaders, tmp_path, accumulate=2)
    n_steps = EPOCHS * STEPS_PER_EPOCH
    assert trainer.global_step == n_steps and len(module.step_losses) == 2 * n_steps
    run = convscope.load_run(tmp_path / "run")
    check_rows(run.activation_stats, ref.record, n_steps)
    # each step's loss is the mean of its two micro-batches
    np.testing.assert_allclose(run.steps["loss"], np.asarray(module.step_losses).reshape(-1, 2).mean(1), rtol=1e-5)


def test_fp16_mixed_norms_are_of_the_unscaled_gradients(loaders, tmp_path):
    """Lightning turns precision="16-mixed" on a CPU into bf16; its plugin, given explicitly, runs fp16 with a
    GradScaler there as it does on a GPU."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    module = Net()
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    trainer, scope, ref = fit(module, loaders, tmp_path, plugins=[plugin], limit=3)
    scaler = trainer.precision_plugin.scaler
    assert scaler is plugin.scaler and scaler.get_scale() > 1  # a real loss scale: scaled and unscaled differ
    data = convscope.load_run(tmp_path / "run").activation_stats
    check_rows(data, ref.record, EPOCHS * 3)
    assert np.nanmax(data.grad_norm) < 100, "no loss scale left in the norms"


def test_report_and_diagnose_accept_a_lightning_run(bf16_run):
    from typer.testing import CliRunner

    from convscope.cli.app import app

    run_dir = bf16_run[3]
    runner = CliRunner()
    diagnosed = runner.invoke(app, ["diagnose", str(run_dir)])
    assert diagnosed.exit_code == 0, diagnosed.output
    findings = json.loads((run_dir / "findings.json").read_text())
    assert isinstance(findings, list)
    reported = runner.invoke(app, ["report", str(run_dir)])
    assert reported.exit_code == 0, reported.output
    page = (run_dir / "report.html").read_text()
    assert "net.0" in page and "val_acc" in page


def test_a_scope_refuses_a_run_folder_that_exists(tmp_path):
    from convscope.errors import RunError

    (tmp_path / "run").mkdir()
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                                callbacks=[Scope(tmp_path / "run")], enable_progress_bar=False)
    x = torch.zeros(4, 1, 28, 28)
    with pytest.raises(RunError, match="already exists"):
        trainer.fit(Net(), DataLoader(TensorDataset(x, torch.zeros(4, dtype=torch.long)), batch_size=4))
    assert list((tmp_path / "run").iterdir()) == []  # nothing written into the other run's folder


def test_under_ddp_the_rows_are_of_the_global_batch_and_rank_0_writes_them(mnist_tensors, tmp_path):
    """Two CPU processes (ddp_spawn, gloo): each rank sees half of every batch; the recorded row of a step must
    be the statistics of both halves together, the gradient norm that of DDP's averaged gradient. Checked at
    the first step, whose weights (the initial ones) a single process can reproduce: a plain forward and
    backward of the model on the whole global batch."""
    x, y, _, _ = mnist_tensors
    n_steps = 3
    torch.manual_seed(0)
    module = Net(bn=False)  # batch norm would normalise each rank's half on its own (no SyncBatchNorm)
    layers = layers_of(module)
    reference = Net(bn=False)
    reference.load_state_dict(module.state_dict())
    train = DataLoader(TensorDataset(x[: 2 * BS * n_steps], y[: 2 * BS * n_steps]), batch_size=BS, shuffle=False)
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_spawn",
                                callbacks=[Scope(tmp_path / "run", every=1, sample=None)], logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train)
    run = convscope.load_run(tmp_path / "run")
    data = run.activation_stats
    assert list(data.steps) == list(range(n_steps)) and run.config["world_size"] == 2
    assert len(run.steps["loss"]) == n_steps
    outputs = {}
    hooks = [reference.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: outputs.__setitem__(n, o.detach().double())) for n in layers]
    # Lightning gives each rank a DistributedSampler, shuffled for training (seed 0) whatever the loader's
    # own sampler; rank r's first batch is the first BS indices of its sampler.
    first = torch.cat([torch.tensor(list(DistributedSampler(train.dataset, 2, rank, shuffle=True, seed=0))[:BS])
                       for rank in range(2)])
    F.cross_entropy(reference(x[first]), y[first]).backward()
    for h in hooks:
        h.remove()
    for j, name in enumerate(layers):
        o = outputs[name]
        assert data.mean[0, j] == pytest.approx(o.mean().item(), rel=1e-4, abs=1e-5), name
        assert data.std[0, j] == pytest.approx(o.std().item(), rel=1e-4, abs=1e-5), name
        assert_near_zero_share(data.near_zero[0, j], o, name)
        params = list(reference.get_submodule(name).parameters(recurse=False))
        if params:
            norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()
            assert data.grad_norm[0, j] == pytest.approx(norm, rel=1e-4), name
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json", "metrics.jsonl", "stats.npz", "steps.npz"]
