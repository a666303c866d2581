"""Event names of the training loop and the exceptions that cancel part of it.

The order of EVENTS is the order in which a training step fires them. A callback raises one of the
Cancel* exceptions to skip the rest of a batch, the training or validation phase, an epoch, or the whole
fit; the loop then fires the matching `after_cancel_*` event and carries on with the cleanup events
(`after_batch`, `after_epoch`, `after_fit`), so that nothing a callback set up is left behind.
"""

EVENTS: tuple[str, ...] = (
    "before_fit",
    "before_epoch",
    "before_train",
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_backward",
    "before_step",
    "after_step",
    "after_batch",
    "after_train",
    "before_validate",
    "after_validate",
    "after_epoch",
    "after_fit",
    "after_cancel_batch",
    "after_cancel_train",
    "after_cancel_validate",
    "after_cancel_epoch",
    "after_cancel_fit",
)


class CancelBatchException(Exception):
    """Skip the rest of this batch (no backward or step when raised before them)."""


class CancelTrainException(Exception):
    """Skip the rest of this epoch's training phase; validation still runs."""


class CancelValidateException(Exception):
    """Skip the rest of this epoch's validation."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch."""


class CancelFitException(Exception):
    """Stop training cleanly: `after_fit` still runs and hooks are removed."""
