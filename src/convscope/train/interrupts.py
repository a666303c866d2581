"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM: at the next batch boundary, with files flushed.

`GracefulStop` is a callback; `catch_signals(stopper)` installs the handlers for the duration of a
`with` block (main thread only) and puts the previous handlers back afterwards. The first signal asks
for a stop at the end of the current batch; a second one interrupts at once (KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from convscope.train.callback import Callback
from convscope.train.events import CancelFitException


class GracefulStop(Callback):
    order = 1000  # last: every other callback has finished the batch (RunSaver knows the position)

    def __init__(self) -> None:
        self.signum: int | None = None
        # Under torch.distributed all ranks must stop at the same step: the DistributedTrainer sets this
        # to a function that returns True on every rank once any rank asked (see dist/ddp.py).
        self.agree: Callable[[bool], bool] | None = None

    def request(self, signum: int) -> None:
        if self.signum is not None:
            # Asked twice: stop now. Under torchrun a Ctrl-C reaches each process twice, as SIGINT from the
            # terminal and as SIGTERM from torchrun passing it on: that pair is still one request.
            if self.agree is None or signum == self.signum:
                raise KeyboardInterrupt
            return
        self.signum = signum

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        asked = self.signum is not None
        if self.agree is not None:
            asked = self.agree(asked)
            if asked and self.signum is None:
                self.signum = signal.SIGTERM  # another rank was signalled: report it as a stop request
        if asked:
            raise CancelFitException


@contextmanager
def catch_signals(stopper: GracefulStop) -> Iterator[GracefulStop]:
    if threading.current_thread() is not threading.main_thread():
        yield stopper
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: stopper.request(signum))
    try:
        yield stopper
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class SignalStop(BaseException):
    """Raised by `stop_on_signals` when SIGINT/SIGTERM arrives: what was being written is abandoned. A
    BaseException, as KeyboardInterrupt is: the `except Exception` of a file reader must not take it for a
    damaged file."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM raise SignalStop inside the block (main thread only), so that work after training
    (diagnosis, report) stops at once and is reported like a stop during training, not killed silently.
    Every file is written atomically, so what the signal interrupts leaves the previous version whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum: int, frame: object) -> None:
        raise SignalStop(signum)

    for s in previous:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
