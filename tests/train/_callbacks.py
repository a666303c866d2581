"""Callbacks the training tests share."""

from __future__ import annotations

from convscope.train import Callback, CancelFitException


class StopAt(Callback):
    """Cancel the fit right after optimizer step `step`, as an interrupt would (last, after every callback)."""

    order = 1000

    def __init__(self, step: int) -> None:
        self.step = step

    def after_batch(self) -> None:
        if self.learn.train_iter == self.step:
            raise CancelFitException
