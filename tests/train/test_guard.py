"""The non-finite guard: an injected NaN is caught at its step, naming the layer; the checkpoint survives."""

from __future__ import annotations

import json

import pytest
import torch

from convscope import TrainConfig, load_run
from convscope.experiments import run_training
from convscope.models.cnn import simple_cnn
from convscope.runs.checkpoint import load_checkpoint
from convscope.train import Callback
from convscope.train.guard import NonFiniteError, NonFiniteGuard, first_nonfinite_layer

BAD_STEP = 20  # in epoch 2 of 16-step epochs: the end-of-epoch-1 checkpoint exists


class CorruptWeight(Callback):
    """Writes NaN into one weight of conv3 just before step BAD_STEP's forward pass."""

    def before_batch(self):
        if self.learn.training and self.learn.train_iter == BAD_STEP:
            with torch.no_grad():
                self.learn.model.get_submodule("conv3.conv").weight[0, 0, 0, 0] = float("nan")


def test_injected_nan_is_caught_at_its_step_naming_the_layer(data_dir, tmp_path):
    cfg = TrainConfig(data_root=str(data_dir), out=str(tmp_path), name="nan", epochs=2, bs=256, limit_train=4096,
                      device="cpu")
    with pytest.raises(NonFiniteError) as info:
        run_training(cfg, cbs=[CorruptWeight()])
    message = str(info.value)
    assert f"at step {BAD_STEP}" in message and "conv3.conv" in message
    run_dir = tmp_path / "nan"
    findings = json.loads((run_dir / "findings.json").read_text())
    assert findings[0]["rule"] == "loss_not_finite" and findings[0]["layer"] == "conv3.conv"
    assert findings[0]["steps"] == [BAD_STEP, BAD_STEP]
    # The last checkpoint is the good one from the end of epoch 1: it loads and validates well.
    ckpt = load_checkpoint(run_dir)
    assert (ckpt.epoch, ckpt.train_iter) == (1, 16)
    model = simple_cnn()
    model.load_state_dict(ckpt.model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    from convscope.data.batches import normalize_images
    from convscope.data.sources import load_dataset

    data = load_dataset("mnist", root=data_dir)
    norm = json.loads((run_dir / "config.json").read_text())["data"]["normalize"]
    xt, _, _ = normalize_images(data.test_images, norm["mean"], norm["std"])
    with torch.no_grad():
        acc = (model(xt).argmax(1) == data.test_labels).float().mean().item()
    assert acc > 0.9, acc
    assert load_run(run_dir).metrics[0]["accuracy"] == pytest.approx(acc, abs=1e-4)


def test_first_nonfinite_layer_names_the_first_module_in_forward_order():
    model = simple_cnn().eval()
    x = torch.randn(2, 1, 28, 28)
    assert first_nonfinite_layer(model, x) is None
    with torch.no_grad():
        model.get_submodule("conv2.bn").running_var.fill_(-1.0)  # sqrt of a negative variance: NaN output
    assert first_nonfinite_layer(model, x) == "conv2.bn"


def test_a_guard_that_reads_every_n_steps_names_the_exact_bad_step_and_never_checkpoints_nan(mnist_tensors,
                                                                                               tmp_path):
    # The GPU mode (no host read per step), run on the CPU: NaN at step 5, flag read every 4 steps, a
    # checkpoint due after step 7. The error must come before that checkpoint and name step 5.
    from convscope.data.batches import DeviceBatches
    from convscope.train import Learner
    from convscope.train.run_saver import RunSaver

    class NanLoss(Callback):
        order = 1  # before the guard (5) looks at the loss

        def after_loss(self):
            if self.learn.training and self.learn.train_iter == 5:
                self.learn.loss = self.learn.loss * float("nan")

    x, y, _, _ = mnist_tensors
    learn = Learner(simple_cnn(), DeviceBatches(x[:2048], y[:2048], 128, shuffle=True, drop_last=True), None,
                    cbs=[NonFiniteGuard(check_every=4, read_loss=False), NanLoss(),
                         RunSaver(tmp_path, {}, checkpoint_every=7)])
    with pytest.raises(NonFiniteError, match="the loss became NaN/Inf at step 5 "):
        learn.fit(1, 1e-3)
    assert learn.train_iter == 7  # read at the checkpoint after step 7 (before writing it), not later
    assert not (tmp_path / "checkpoint").exists()


def test_the_default_guard_on_a_cpu_reads_the_loss_at_once_and_keeps_the_weights_finite(mnist_tensors):
    # The default window (16 steps) keeps the gradient flags, but a CPU reads the loss at every step (no
    # sync): a NaN loss at step 5 stops the fit before its backward pass and optimizer step.
    from convscope.data.batches import DeviceBatches
    from convscope.train import Learner
    from convscope.train.guard import DEFAULT_CHECK_EVERY, NonFiniteGuard

    class NanLoss(Callback):
        order = 1

        def after_loss(self):
            if self.learn.training and self.learn.train_iter == 5:
                self.learn.loss = self.learn.loss * float("nan")

    x, y, _, _ = mnist_tensors
    guard = NonFiniteGuard()
    learn = Learner(simple_cnn(), DeviceBatches(x[:2048], y[:2048], 128, shuffle=True, drop_last=True), None,
                    cbs=[guard, NanLoss()])
    with pytest.raises(NonFiniteError, match="the loss became nan at step 5 "):
        learn.fit(1, 1e-3)
    assert guard.every == DEFAULT_CHECK_EVERY > 1
    assert learn.train_iter == 5  # steps 0-4 taken, step 5 stopped before its update
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


@pytest.mark.parametrize("check_every", [1, 4, None])
def test_a_nonfinite_gradient_with_a_finite_loss_stops_training_before_the_update(mnist_tensors, check_every):
    # Step 6's conv2 weight gradient gets one Inf after backward; the loss stays finite. Read every step
    # the guard must stop at step 6 before the optimizer step, so the weights are those after step 5, bit
    # for bit; read every 4 steps it must still name step 6 exactly; with the default window (16) on the
    # CPU, the Inf update makes step 7's loss NaN, read at once, and the window then names step 6.
    from convscope.data.batches import DeviceBatches
    from convscope.train import Learner
    from convscope.train.guard import NonFiniteGuard

    class InfGradient(Callback):
        order = 1  # before the guard (5) looks at the gradients

        def after_backward(self):
            if self.learn.train_iter == 6:
                self.learn.model.get_submodule("conv2.conv").weight.grad[0, 0, 0, 0] = float("inf")

    class Snapshot(Callback):
        def after_step(self):
            self.weights = [p.detach().clone() for p in self.learn.model.parameters()]

    x, y, _, _ = mnist_tensors
    snap = Snapshot()
    torch.manual_seed(0)
    # check_every 4: the GPU way on the CPU (the losses wait in the window too)
    guard = NonFiniteGuard(check_every=check_every, read_loss=False if check_every == 4 else None)
    learn = Learner(simple_cnn(), DeviceBatches(x[:2048], y[:2048], 128, shuffle=True, drop_last=True), None,
                    cbs=[guard, InfGradient(), snap])
    with pytest.raises(NonFiniteError, match="the gradient became NaN/Inf at step 6 "):
        learn.fit(1, 1e-3)
    if check_every == 1:
        assert torch.isfinite(learn.loss).all()  # it was the gradient alone
        assert learn.train_iter == 6  # steps 0-5 were taken, step 6 was not
        assert all(torch.equal(p, w) for p, w in zip(learn.model.parameters(), snap.weights))
    elif check_every == 4:
        assert learn.train_iter == 8  # read after step 7 (the flag's first read after the bad step)
    else:
        assert learn.train_iter == 7  # step 7's NaN loss, read before its update, led to the window
