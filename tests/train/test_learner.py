"""The event loop: order of events, cancellation, callbacks by name after fit and after a crash."""

from __future__ import annotations

import pytest
import torch

from convscope.data.batches import DeviceBatches
from convscope.errors import ConfigError
from convscope.models.cnn import simple_cnn
from convscope.train import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelFitException,
    Learner,
)


class EventLog(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattribute__(self, name: str):
        # Record every event method that the learner calls on us.
        if name in EVENTS:
            log = object.__getattribute__(self, "events")
            return lambda: log.append(name)
        return object.__getattribute__(self, name)


# EventLog records through __getattribute__, so its class must look as if it overrides every event.
for _ev in EVENTS:
    setattr(EventLog, _ev, lambda self: None)


def small_learner(mnist_tensors, n_train=1024, bs=256, cbs=()):
    x, y, xt, yt = mnist_tensors
    torch.manual_seed(0)
    train = DeviceBatches(x[:n_train], y[:n_train], bs, shuffle=True, drop_last=True)
    valid = DeviceBatches(xt[:512], yt[:512], 512)
    return Learner(simple_cnn(), train, valid, cbs=cbs)


BATCH = ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward", "before_step",
         "after_step", "after_batch"]


def test_event_order_for_one_epoch(mnist_tensors):
    log = EventLog()
    learn = small_learner(mnist_tensors, n_train=512, bs=256, cbs=[log])
    learn.fit(1, 1e-3)
    expected = ["before_fit", "before_epoch", "before_train", *BATCH, *BATCH, "after_train",
                "before_validate", "after_validate", "after_epoch", "after_fit"]
    assert log.events == expected


def test_cancel_batch_skips_step_but_not_after_batch(mnist_tensors):
    class SkipStep(Callback):
        def before_step(self):
            raise CancelBatchException

    learn = small_learner(mnist_tensors, n_train=512, bs=256)
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1, 1e-3, cbs=[SkipStep()])
    after = list(learn.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "no optimizer step may have happened"
    assert learn.train_iter == 0
    assert len(learn.recorder.steps["loss"]) == 2  # after_batch still ran for both batches


def test_cancel_fit_runs_after_fit_and_stops(mnist_tensors):
    class StopAt(Callback):
        def after_step(self):
            if self.learn.train_iter == 2:
                raise CancelFitException

    log = EventLog()
    learn = small_learner(mnist_tensors, cbs=[log])
    learn.fit(3, 1e-3, cbs=[StopAt()])
    assert learn.train_iter == 2
    assert log.events[-2:] == ["after_cancel_fit", "after_fit"]


def test_callbacks_reachable_by_name_after_fit_and_after_exception(mnist_tensors):
    class Boom(Callback):
        def after_step(self):
            if self.learn.train_iter == 3:
                raise RuntimeError("boom")

    class Watcher(Callback):
        def __init__(self):
            self.after_fit_called = False

        def after_fit(self):
            self.after_fit_called = True

    learn = small_learner(mnist_tensors, cbs=[Watcher()])
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(2, 1e-3, cbs=[Boom()])
    assert learn.watcher.after_fit_called
    assert isinstance(learn.exception, RuntimeError)
    assert isinstance(learn.boom, Boom)  # fit-time callbacks stay reachable by name
    assert learn.boom not in learn.cbs  # ... but no longer receive events
    # The two completed batches were kept; the third crashed before its after_batch.
    assert len(learn.recorder.losses) == 2


def test_keyboard_interrupt_still_fires_after_fit(mnist_tensors):
    class Interrupt(Callback):
        def after_step(self):
            raise KeyboardInterrupt

    log = EventLog()
    learn = small_learner(mnist_tensors, cbs=[log])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, 1e-3, cbs=[Interrupt()])
    assert log.events[-1] == "after_fit"


def test_callback_order_attribute(mnist_tensors):
    calls: list[str] = []

    class Late(Callback):
        order = 80

        def before_fit(self):
            calls.append("late")

    class Early(Callback):
        order = -5

        def before_fit(self):
            calls.append("early")

    learn = small_learner(mnist_tensors, n_train=256, cbs=[Late(), Early()])
    learn.fit(1, 1e-3)
    assert calls == ["early", "late"]


def test_recorder_matches_loss_recomputed_by_hand(mnist_tensors):
    """The recorded step loss equals cross-entropy recomputed from the batch the learner saw."""

    class Capture(Callback):
        order = 60

        def after_loss(self):
            if self.learn.iter == 0:
                with torch.no_grad():
                    self.expected = torch.nn.functional.cross_entropy(self.learn.pred, self.learn.yb).item()

    learn = small_learner(mnist_tensors, n_train=512, bs=256, cbs=[Capture()])
    learn.fit(1, 1e-3)
    assert learn.recorder.losses[0] == pytest.approx(learn.capture.expected, rel=1e-6)
    assert learn.recorder.epochs[0]["train_loss"] == pytest.approx(float(learn.recorder.losses.mean()), rel=1e-6)


def test_validate_equals_plain_pytorch(mnist_tensors):
    learn = small_learner(mnist_tensors, n_train=512, bs=256)
    learn.fit(1, 1e-3)
    _, _, xt, yt = mnist_tensors
    learn.model.eval()
    with torch.no_grad():
        out = learn.model(xt[:512])
    res = learn.validate()
    assert res["accuracy"] == pytest.approx((out.argmax(1) == yt[:512]).float().mean().item(), abs=1e-6)
    assert res["valid_loss"] == pytest.approx(torch.nn.functional.cross_entropy(out, yt[:512]).item(), rel=1e-5)


def test_seeded_runs_are_reproducible(mnist_tensors):
    def run():
        learn = small_learner(mnist_tensors)
        learn.fit_one_cycle(1, 0.01)
        return learn.recorder.losses, [p.detach().clone() for p in learn.model.parameters()]

    (l1, p1), (l2, p2) = run(), run()
    assert (l1 == l2).all()
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_bad_lr_is_a_config_error(mnist_tensors, bad):
    learn = small_learner(mnist_tensors, n_train=256)
    with pytest.raises(ConfigError, match="lr"):
        learn.fit(1, bad)


@pytest.mark.parametrize("bad", [0, -1.5, float("nan"), float("inf"), True, "2"])
def test_bad_epochs_is_a_config_error(mnist_tensors, bad):
    learn = small_learner(mnist_tensors, n_train=256)
    with pytest.raises(ConfigError, match="n_epochs"):
        learn.fit(bad, 1e-3)


def test_fractional_epochs_take_the_rounded_share_of_steps_and_validate_at_the_end(mnist_tensors):
    # 1024 items / bs 128 = 8 batches per epoch; 1.4 epochs = round(11.2) = 11 steps: 8, then 3.
    log = EventLog()
    x, y, xt, yt = mnist_tensors
    torch.manual_seed(0)
    learn = Learner(simple_cnn(), DeviceBatches(x[:1024], y[:1024], 128, shuffle=True, drop_last=True),
                    DeviceBatches(xt[:256], yt[:256], 256))
    learn.fit_one_cycle(1.4, 1e-2, div=10.0, div_final=100.0, cbs=[log])
    assert learn.train_iter == 11
    assert log.events.count("after_step") == 11
    assert log.events.count("after_validate") == 2  # after the whole epoch and after the partial one
    assert learn.n_epochs == 2
    # The schedule spans the 11 steps: the last one reaches lr_max / div_final (the closed form's end).
    assert learn.opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 100.0, rel=1e-9)
