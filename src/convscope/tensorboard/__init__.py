"""TensorBoard event files from a run's plain arrays (steps, statistics, metrics, findings), written as the run
goes: what `convscope train --tensorboard`, `watch(..., tensorboard=...)` and `convscope export-tensorboard` use.
Needs the optional extra `convscope[tensorboard]`."""

from convscope.tensorboard.events import STAT_SERIES, RunEvents, require_tensorboard

__all__ = ["STAT_SERIES", "RunEvents", "require_tensorboard"]
