"""Learner.state_dict / load_state_dict (the declared way to stop and continue a fit), the Batches check,
and the run-folder hooks every Callback declares. The reference is always an uninterrupted plain run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from convscope.data.batches import Batches, DeviceBatches, ResumableBatches
from convscope.errors import ConfigError
from convscope.models.cnn import simple_cnn
from convscope.train import Callback, Learner
from convscope.train.callback import ResumePoint

from ._callbacks import StopAt

N_TRAIN, BS = 1024, 128  # 8 batches an epoch




def make_learner(mnist_tensors, loader: bool = False, cbs=()) -> Learner:
    x, y, xt, yt = mnist_tensors
    torch.manual_seed(0)  # identical initial weights for every learner made here
    if loader:
        gen = torch.Generator().manual_seed(1)
        train = DataLoader(TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), batch_size=BS, shuffle=True, drop_last=True,
                           generator=gen)
    else:
        train = DeviceBatches(x[:N_TRAIN], y[:N_TRAIN], BS, shuffle=True, drop_last=True, seed=1)
    return Learner(simple_cnn(), train, DeviceBatches(xt[:512], yt[:512], 512), cbs=cbs)


def weights(learn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


@pytest.mark.parametrize("stop_at", [5, 8, 13])  # mid-epoch 1, at the epoch's end, mid-epoch 2
def test_a_fit_stopped_and_continued_from_its_state_equals_the_uninterrupted_fit(mnist_tensors, stop_at):
    straight = make_learner(mnist_tensors)
    straight.fit_one_cycle(2, 0.01)

    first = make_learner(mnist_tensors, cbs=[StopAt(stop_at)])
    first.fit_one_cycle(2, 0.01)
    assert first.train_iter == stop_at
    saved = copy.deepcopy(first.state_dict())  # what a checkpoint holds
    torch.manual_seed(12345)  # disturb the RNG streams: load_state_dict must put them back

    second = make_learner(mnist_tensors)
    second.load_state_dict(saved)
    second.fit_one_cycle(2, 0.01)
    assert second.train_iter == straight.train_iter == 16
    for name, value in weights(straight).items():
        assert torch.equal(value, weights(second)[name]), name


def test_the_state_has_a_position_while_there_is_a_fit_to_continue(mnist_tensors):
    learn = make_learner(mnist_tensors)
    assert learn.state_dict()["epoch"] is None  # nothing to continue before a fit
    seen = {}

    class Peek(Callback):
        def after_batch(self) -> None:
            seen.setdefault("first", self.learn.state_dict()["epoch"])
            seen["batch"] = self.learn.state_dict()["batch"]

    learn.fit(1, 1e-3, cbs=[Peek(), StopAt(3)])
    assert seen == {"first": 0, "batch": 3}  # after step 3 the next batch is batch 3 of epoch 0
    assert (learn.state_dict()["epoch"], learn.state_dict()["batch"]) == (0, 3)  # stopped early: kept
    learn.fit(1, 1e-3)  # a new fit from the start, run to its end
    assert learn.state_dict()["epoch"] is None and learn.position is None


def test_a_dataloader_run_continues_by_replaying_its_epoch(mnist_tensors):
    """A DataLoader cannot seek: the resumed epoch is replayed and its first batches dropped."""
    straight = make_learner(mnist_tensors, loader=True)
    straight.fit(1, 1e-3)
    first = make_learner(mnist_tensors, loader=True, cbs=[StopAt(5)])
    gen_at_start = first.train_data.generator.get_state()
    rng_at_start = torch.get_rng_state()
    first.fit(1, 1e-3)
    saved = copy.deepcopy(first.state_dict())
    second = make_learner(mnist_tensors, loader=True)
    second.train_data.generator.set_state(gen_at_start)  # the loader's own generator is not in the state
    second.load_state_dict(saved)
    torch.set_rng_state(rng_at_start)  # ...and with this loader torch's RNG is not used for the order
    second.fit(1, 1e-3)
    assert second.train_iter == straight.train_iter
    for name, value in weights(straight).items():
        assert torch.equal(value, weights(second)[name]), name


def test_resume_from_run_is_called_once_with_the_position(mnist_tensors, tmp_path):
    class Reloads(Callback):
        calls: list = []

        def resume_from_run(self, run_dir, at):
            self.calls.append((run_dir, at, self.learn.training))

    first = make_learner(mnist_tensors, cbs=[StopAt(11)])
    first.fit(2, 1e-3)
    saved = copy.deepcopy(first.state_dict())
    cb = Reloads()
    second = make_learner(mnist_tensors, cbs=[cb])
    second.load_state_dict(saved, run_dir=tmp_path)
    second.fit(2, 1e-3)
    assert cb.calls == [(tmp_path, ResumePoint(epoch=1, batch=3, train_iter=11), False)]
    second.fit(1, 1e-3)  # a later fit is a new fit: nothing is resumed again
    assert len(cb.calls) == 1


def test_a_state_past_the_fit_is_refused(mnist_tensors):
    first = make_learner(mnist_tensors, cbs=[StopAt(13)])
    first.fit(2, 1e-3)
    second = make_learner(mnist_tensors)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    with pytest.raises(ConfigError, match="past this fit's 1 epochs"):
        second.fit(1, 1e-3)


@pytest.mark.parametrize("bad", [lambda: None, torch.zeros(4, 1, 28, 28), 5, "train"])
def test_the_learner_refuses_what_is_not_batches(mnist_tensors, bad):
    with pytest.raises(ConfigError) as info:
        Learner(simple_cnn(), bad)
    message = str(info.value)
    assert "train_data must be batches of (inputs, targets) with a length" in message
    assert type(bad).__name__ in message and "DataLoader" in message


def test_what_the_learner_accepts_is_what_the_protocols_say(mnist_tensors):
    x, y, _, _ = mnist_tensors
    device = DeviceBatches(x[:256], y[:256], 64)
    loader = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=64)
    assert isinstance(device, ResumableBatches) and isinstance(loader, Batches)
    assert not isinstance(loader, ResumableBatches)  # it replays instead (test above)
    with pytest.raises(ConfigError, match="valid_data must be batches"):
        Learner(simple_cnn(), device, valid_data=object())


def test_the_base_callback_declares_every_run_folder_hook():
    """RunSaver and a resumed fit call these on every callback: a plain Callback must accept them."""
    cb = Callback()
    assert cb.save_to_run("/nonexistent") is None
    assert cb.resume_from_run("/nonexistent", ResumePoint(0, 0, 0)) is None
    assert cb.before_checkpoint() is None
