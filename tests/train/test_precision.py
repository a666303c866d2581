"""Mixed precision in the Learner: bf16 and fp16 train on real MNIST, callbacks see unscaled gradients, an
fp16 run resumes bitwise (the loss scale included), the NaN guard tells a scaler's skip from a failure, and
precision "32" is plain float32 training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from convscope import TrainConfig
from convscope.data.batches import DeviceBatches
from convscope.errors import ConfigError
from convscope.models.cnn import simple_cnn
from convscope.runs.checkpoint import load_checkpoint, restore, save_checkpoint
from convscope.stats.activations import ActivationStats
from convscope.train import Callback, Learner
from convscope.train.guard import NonFiniteError, NonFiniteGuard

from ._callbacks import StopAt

BS = 64


def make_learner(mnist_tensors, precision: str, n_train: int = 1024, cbs=(), n_valid: int = 1000) -> Learner:
    x, y, xt, yt = mnist_tensors
    torch.manual_seed(0)
    train = DeviceBatches(x[:n_train], y[:n_train], BS, shuffle=True, drop_last=True, seed=1)
    return Learner(simple_cnn(), train, DeviceBatches(xt[:n_valid], yt[:n_valid], 500), cbs=cbs, precision=precision)


def fast_scaler(learn: Learner) -> None:
    """A scale that overflows at first and grows every 3 steps: the scaler skips steps all through the run."""
    learn.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, growth_interval=3)


class Peek(Callback):
    """What the loop computes under autocast, and whether each step changed the weights."""

    def __init__(self) -> None:
        self.pred_dtypes, self.changed = set(), []

    def after_pred(self) -> None:
        self.pred_dtypes.add(self.learn.pred.dtype)

    def before_step(self) -> None:
        self._before = [p.detach().clone() for p in self.learn.model.parameters()]

    def after_step(self) -> None:
        after = list(self.learn.model.parameters())
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(after, self._before)))




@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_a_mixed_precision_run_trains_simple_cnn(mnist_tensors, precision, dtype):
    peek = Peek()
    learn = make_learner(mnist_tensors, precision, n_train=4096, cbs=[peek, NonFiniteGuard()])
    learn.fit_one_cycle(1, 0.01)
    losses = learn.recorder.losses
    assert peek.pred_dtypes == {dtype}  # the forward pass really ran in the low precision
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())  # the weights stay float32
    assert losses[-8:].mean() < 0.5 * losses[:8].mean()
    assert learn.valid_results["accuracy"] > 0.9
    # An independent float32 evaluation of the trained weights agrees with the validation under autocast.
    _, _, xt, yt = mnist_tensors
    learn.model.eval()
    with torch.no_grad():
        acc32 = (learn.model(xt[:1000]).argmax(1) == yt[:1000]).float().mean().item()
    assert abs(acc32 - learn.valid_results["accuracy"]) < 0.01


def test_callbacks_see_the_unscaled_gradients_of_an_fp16_step(mnist_tensors):
    """At after_backward every .grad is d(loss)/d(param), not d(scale * loss)/d(param)."""

    class Compare(Callback):
        def __init__(self) -> None:
            self.errors, self.scales = [], []

        def before_backward(self) -> None:
            params = list(self.learn.model.parameters())
            self._expected = torch.autograd.grad(self.learn.loss, params, retain_graph=True)  # the unscaled loss

        def after_backward(self) -> None:
            got = torch.cat([p.grad.flatten() for p in self.learn.model.parameters()])
            want = torch.cat([g.flatten() for g in self._expected])
            self.errors.append(((got - want).norm() / want.norm()).item())
            self.scales.append(self.learn.scaler.get_scale())

    cb = Compare()
    learn = make_learner(mnist_tensors, "fp16", cbs=[cb])
    learn.fit(1, 1e-3)
    assert len(cb.errors) == 1024 // BS
    assert min(cb.scales) >= 2.0 ** 10  # a scaled gradient would be off by a factor of 1000 or more
    assert max(cb.errors) < 1e-2  # fp16 rounding of the backward pass only


def test_activation_stats_gradient_norms_are_those_of_the_unscaled_gradients(mnist_tensors):
    class Norms(Callback):
        order = 0  # after ActivationStats (-20) has taken its norms

        def __init__(self) -> None:
            self.rows = []

        def after_backward(self) -> None:
            row = []
            for _, module in self.learn.activation_stats.collector.named:
                grads = [p.grad.flatten() for p in module.parameters(recurse=False)]
                row.append(torch.linalg.vector_norm(torch.cat(grads)).item() if grads else float("nan"))
            self.rows.append(row)

    norms = Norms()
    learn = make_learner(mnist_tensors, "fp16", cbs=[ActivationStats(every=1, sample=None), norms])
    learn.fit(1, 1e-3)
    recorded = torch.tensor(learn.activation_stats.grad_norm)
    expected = torch.tensor(norms.rows, dtype=torch.float64)
    assert recorded.shape == expected.shape == (1024 // BS, len(learn.activation_stats.layers))
    assert torch.equal(recorded.isnan(), expected.isnan())
    has = ~expected.isnan()
    torch.testing.assert_close(recorded[has], expected[has], rtol=1e-5, atol=0)
    assert expected[has].max() < 100  # unscaled: the scale (65536) would put these far above


def test_skipped_steps_are_recorded_and_leave_the_weights_alone(mnist_tensors):
    peek = Peek()
    learn = make_learner(mnist_tensors, "fp16", cbs=[peek, NonFiniteGuard()])
    fast_scaler(learn)
    learn.fit(1, 1e-3)
    skipped = learn.recorder.step_arrays()["skipped"]
    assert len(skipped) == 1024 // BS and skipped.sum() >= 3  # the first steps overflow, and each growth again
    # The guard let the scaler do its job, and a skipped step is exactly one whose update did nothing.
    assert list(skipped == 0) == peek.changed
    assert learn.train_iter == 1024 // BS


def test_an_fp16_run_stopped_and_resumed_from_its_checkpoint_equals_the_uninterrupted_run(mnist_tensors, tmp_path):
    straight = make_learner(mnist_tensors, "fp16")
    fast_scaler(straight)
    straight.fit_one_cycle(2, 0.01)

    first = make_learner(mnist_tensors, "fp16", cbs=[StopAt(21)])
    fast_scaler(first)
    first.fit_one_cycle(2, 0.01)
    saved = first.state_dict()
    assert saved["scaler"]["scale"] != 2.0 ** 24  # the scale moved: resuming with a fresh scaler would differ
    save_checkpoint(tmp_path, saved)  # through the files: the scale and growth tracker go into state.json
    torch.manual_seed(12345)

    second = make_learner(mnist_tensors, "fp16")
    fast_scaler(second)
    restore(second, load_checkpoint(tmp_path))
    second.fit_one_cycle(2, 0.01)
    assert second.train_iter == straight.train_iter == 32
    assert second.scaler.state_dict() == straight.scaler.state_dict()
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_guard_stops_an_fp16_run_whose_scaler_keeps_skipping(mnist_tensors):
    """A scale of 2**100 overflows every gradient: after max_skipped skips in a row the guard gives up."""
    for check_every in (1, None):  # read at every step, and in the default window (read after 16 steps)
        guard = NonFiniteGuard(max_skipped=5, check_every=check_every)
        learn = make_learner(mnist_tensors, "fp16", cbs=[guard])
        learn.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
        gave_up = r"\(5 fp16 steps skipped in a row, the scale now [0-9.e+]+\) at step 4 "
        with pytest.raises(NonFiniteError, match=gave_up):
            learn.fit(1, 1e-3)
        if check_every == 1:
            assert learn.scaler.get_scale() == 2.0 ** 96  # halved after each of the 4 skips before the 5th one's check
        else:
            assert learn.train_iter == 16  # the window's read, after step 15

    # With a scale 2**30 that takes a few halvings to fit, a guard allowing more skips lets the scaler find it.
    patient = make_learner(mnist_tensors, "fp16", n_train=2048, cbs=[NonFiniteGuard(max_skipped=20)])
    patient.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 30)
    patient.fit(1, 1e-3)
    skipped = patient.recorder.step_arrays()["skipped"]
    assert patient.train_iter == 2048 // BS and skipped[:5].all() and not skipped[-5:].any()


def test_a_nan_loss_still_stops_an_fp16_run_at_once(mnist_tensors):
    def loss_nan_at_step_3(pred, yb):
        loss = F.cross_entropy(pred, yb)
        return loss * float("nan") if learn.train_iter == 3 else loss

    learn = make_learner(mnist_tensors, "fp16", cbs=[NonFiniteGuard()])
    learn.loss_func = loss_nan_at_step_3
    with pytest.raises(NonFiniteError, match="the loss became nan at step 3"):
        learn.fit(1, 1e-3)


def test_precision_32_is_plain_float32_training(mnist_tensors):
    """The default learner is the hand-written float32 loop, bit for bit: no autocast, no scaler."""
    peek = Peek()
    learn = make_learner(mnist_tensors, "32", n_train=512, cbs=[peek])
    learn.fit(1, 1e-3)
    assert peek.pred_dtypes == {torch.float32} and learn.scaler is None and learn.state_dict()["scaler"] is None

    x, y, _, _ = mnist_tensors
    torch.manual_seed(0)
    model = simple_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01, fused=True)
    for xb, yb in DeviceBatches(x[:512], y[:512], BS, shuffle=True, drop_last=True, seed=1):
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.state_dict().items(), learn.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_an_unknown_precision_is_refused_in_one_line(mnist_tensors):
    x, y, _, _ = mnist_tensors
    with pytest.raises(ConfigError, match=r"^unknown precision 'fp8'; choose 32, bf16, fp16$"):
        Learner(simple_cnn(), DeviceBatches(x[:64], y[:64], 64), precision="fp8")
    with pytest.raises(ConfigError, match=r"^unknown precision 16; choose 32, bf16, fp16$"):
        TrainConfig(precision=16)
    assert TrainConfig().precision == "32"


def test_an_fp16_state_goes_into_a_learner_of_another_precision_without_its_scale(mnist_tensors):
    first = make_learner(mnist_tensors, "fp16", cbs=[StopAt(3)])
    first.fit(1, 1e-3)
    second = make_learner(mnist_tensors, "32")
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    assert second.scaler is None and second.train_iter == 3
