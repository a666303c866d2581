"""The callback contract: a class with one no-op method per event, and three for run folders.

Subclass `Callback`, override the events you need, and pass an instance to a `Learner`. The learner sets
`self.learn` before `before_fit`. Callbacks run in ascending `order` (ties keep the order they were
added in). After `fit`, and after a crash, every callback stays reachable by its `name` as an attribute
of the learner: `learn.recorder`, `learn.activation_stats`.

Besides the loop's events (events.EVENTS), a callback that keeps files in a run folder overrides
`save_to_run` and `resume_from_run`, and one that must veto a checkpoint overrides `before_checkpoint`.
Every method a Learner or RunSaver may call is declared here: nothing is looked up by name or by
`getattr` on a callback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convscope.train.learner import Learner


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed fit continues: the epoch and batch of its next training step, and the optimizer
    steps taken before it. Whatever a callback recorded from step `train_iter` on was never confirmed by
    a checkpoint, and is dropped on resume."""

    epoch: int
    batch: int
    train_iter: int


def snake_case(name: str) -> str:
    """'ActivationStats' -> 'activation_stats', 'LRFinder' -> 'lr_finder'."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


class Callback:
    """Base class: every event is a no-op, so a subclass states only what it changes."""

    order: int = 0
    learn: Learner

    @property
    def name(self) -> str:
        """Attribute name on the learner: the class name in snake case, without a 'Callback' suffix."""
        cls = type(self).__name__
        if cls.endswith("Callback") and cls != "Callback":
            cls = cls[: -len("Callback")]
        return snake_case(cls)

    # Fit and epoch
    def before_fit(self) -> None: ...
    def before_epoch(self) -> None: ...
    def before_train(self) -> None: ...
    def after_train(self) -> None: ...
    def before_validate(self) -> None: ...
    def after_validate(self) -> None: ...
    def after_epoch(self) -> None: ...
    def after_fit(self) -> None: ...

    # One training batch, in order
    def before_batch(self) -> None: ...
    def after_pred(self) -> None: ...
    def after_loss(self) -> None: ...
    def before_backward(self) -> None: ...
    def after_backward(self) -> None: ...
    def before_step(self) -> None: ...
    def after_step(self) -> None: ...
    def after_batch(self) -> None: ...

    # Cancellation
    def after_cancel_batch(self) -> None: ...
    def after_cancel_train(self) -> None: ...
    def after_cancel_validate(self) -> None: ...
    def after_cancel_epoch(self) -> None: ...
    def after_cancel_fit(self) -> None: ...

    # Run folders and checkpoints: called by RunSaver and by a resumed fit, not by the loop's events
    def save_to_run(self, run_dir: Path) -> None:
        """Write this callback's own files into `run_dir`. RunSaver calls it at each of its flush points
        (epoch ends, checkpoints, the end of fit), so every file of a run describes the same moment.
        Under torch.distributed it is called on every rank (to combine statistics); write on rank 0 only."""

    def resume_from_run(self, run_dir: Path, at: ResumePoint) -> None:
        """Reload what `save_to_run` wrote into `run_dir`, keeping only what came before `at`. A fit
        started after `Learner.load_state_dict(state, run_dir=...)` calls it once, right after before_fit."""

    def before_checkpoint(self) -> None:
        """Called just before RunSaver writes a checkpoint (never after fit failed): raise here to keep a
        bad state out of it (the NaN guard checks the flag it otherwise reads only every N steps)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"
