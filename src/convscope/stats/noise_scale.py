"""Gradient noise scale: the batch size beyond which more samples per step stop buying fewer steps.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", appendix A. For a batch of B
i.i.d. examples the squared norm of its mean gradient G_B has expectation

    E|G_B|^2 = |G|^2 + tr(Sigma) / B

where G is the true gradient and Sigma the covariance of one example's gradient. Measuring |G_B|^2 at
two batch sizes B_small < B_big gives two equations in the two unknowns, hence the unbiased estimates

    |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

Each estimate from one pair is very noisy (|G|^2 can even come out negative), so, as in the paper, each
is smoothed with its own exponential moving average and the noise scale is the ratio of the averages,
B_simple = EMA(tr Sigma) / EMA(|G|^2) -- not an average of per-step ratios, which a near-zero |G|^2
estimate would blow up.

`GradientNoiseScale` measures this during training at almost no cost: see its docstring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from convscope.config import check_whole_number
from convscope.dist.context import all_reduce, current, is_main
from convscope.errors import ConfigError
from convscope.runs.noise_scale import NOISE_SCALE_FILE, ratio_of_means
from convscope.runs.store import atomic_save_npz, read_npz
from convscope.train.callback import Callback, ResumePoint

ArrayLike = float | np.ndarray


def unbiased_estimates(g2_small: ArrayLike, g2_big: ArrayLike, b_small: ArrayLike,
                       b_big: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(|G|^2, tr Sigma) from squared gradient norms measured at batch sizes `b_small` < `b_big`.

    All arguments broadcast (one value or one per measurement); the results are float64 arrays.
    """
    g2_small, g2_big = np.asarray(g2_small, np.float64), np.asarray(g2_big, np.float64)
    b_small, b_big = np.asarray(b_small, np.float64), np.asarray(b_big, np.float64)
    if np.any(b_small <= 0) or np.any(b_big <= b_small):
        raise ConfigError(f"need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
    g2 = (b_big * g2_big - b_small * g2_small) / (b_big - b_small)
    tr_sigma = (g2_small - g2_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, tr_sigma


def ema(values: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average (as Adam's): the running value after each element.

    Bias correction makes the first values averages of what was seen rather than pulled towards 0; it
    cancels in a ratio of two EMAs with the same beta, so B_simple does not depend on it.
    """
    if not 0 <= beta < 1:
        raise ConfigError(f"beta must be in [0, 1), got {beta!r}")
    values = np.asarray(values, np.float64)
    out = np.empty_like(values)
    m = 0.0
    for i, v in enumerate(values):  # a few hundred values per run: a plain loop is clear and fast enough
        m = beta * m + (1 - beta) * v
        out[i] = m / (1 - beta ** (i + 1))
    return out


def running_b_simple(g2_small: ArrayLike, g2_big: ArrayLike, b_small: ArrayLike, b_big: ArrayLike,
                     beta: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B_simple, EMA |G|^2, EMA tr Sigma) after each measurement; B_simple = EMA(tr Sigma) / EMA(|G|^2).

    B_simple is NaN while the averaged |G|^2 is not positive (too few measurements to say).
    """
    g2, tr_sigma = unbiased_estimates(g2_small, g2_big, b_small, b_big)
    g2_ema, tr_ema = ema(np.atleast_1d(g2), beta), ema(np.atleast_1d(tr_sigma), beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        b_simple = np.where(g2_ema > 0, tr_ema / g2_ema, np.nan)
    return b_simple, g2_ema, tr_ema


def _squared_norm(grads: list[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """Sum of squares of all gradients, as a 0-d float32 tensor on `device` (no host sync)."""
    parts = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(parts).sum() if parts else torch.zeros((), device=device)


class GradientNoiseScale(Callback):
    """Measure the gradient noise scale B_simple while a Learner trains, without changing the training.

    Every `every` optimizer steps it compares two gradients at the same weights:
      * big:   the batch's own gradient, read from `.grad` in `after_backward` (B_big = the batch size);
      * small: the gradient of the loss of the batch's first B_small samples (B_small = B_big // n_micro,
        or `micro_bs`), taken in `before_backward` with `torch.autograd.grad` on the *same* forward
        graph (`retain_graph=True`; the learner's own backward frees it as usual).

    Reusing the forward instead of running a second one on the micro-batch means: no extra forward, no
    BatchNorm running-stat update, no random numbers drawn (dropout), no forward hook fired (so
    ActivationStats and the like never see a phantom batch), and `.grad` is never touched -- the
    training trajectory is bit-identical with and without this callback. With BatchNorm the small
    gradient is the mean of the same per-example gradients as the big one (both normalised with the
    batch's statistics), so E[G_small | batch] = G_big exactly, as the estimator assumes.

    Cost: one extra backward pass through the batch's graph every `every` steps, plus two gradient norms
    (what that came to for simple_cnn on the CPU: docs/measurements.md#stats-noise-scale).

    How often: the estimate of one measurement is very noisy and |G|^2 shrinks a hundredfold during a
    run, so the running value is dominated by the first, large-gradient measurements for a long while.
    Give a run at least ~50 measurements (a one-epoch MNIST run at bs 512 has 117 steps: every=1 or 2),
    and read `b_simple_window(0.5, 1.0)` for the noise scale late in the run.
    Nothing is read to the host per step: the squared norms stay on the device and move to the host in
    blocks of `flush_every` measurements and at the end of each training phase.

    Assumes `learn.loss == loss_func(pred, yb)` with a loss that averages over the batch (the default
    cross-entropy, MSE) and batch-first `pred`/`yb` tensors.

    After (or during) fit: `.steps`, `.g2_small`, `.g2_big`, `.b_small`, `.b_big` (raw measurements),
    `.g2` and `.tr_sigma` (unbiased per-measurement estimates), `.b_simple` (running ratio of EMAs),
    `.b_simple_mean` (ratio of the means over all measurements). `save_to_run` writes noise_scale.npz.
    """

    order = 40  # before RunSaver (90), which calls save_to_run after our after_train/after_fit flush

    def __init__(self, every: int = 10, n_micro: int = 2, micro_bs: int | None = None, beta: float = 0.95,
                 flush_every: int = 64) -> None:
        check_whole_number("every", every)
        check_whole_number("n_micro", n_micro, 2)
        check_whole_number("flush_every", flush_every)
        if micro_bs is not None:
            check_whole_number("micro_bs", micro_bs, note="or None")
        if not 0 <= beta < 1:
            raise ConfigError(f"beta must be in [0, 1), got {beta!r}")
        self.every, self.n_micro, self.micro_bs, self.beta = every, n_micro, micro_bs, beta
        self.flush_every = flush_every
        self._host: dict[str, list[float]] = {"step": [], "b_small": [], "b_big": [], "g2_small": [], "g2_big": []}
        self._pending_norms: list[torch.Tensor] = []  # [2] device tensors: |G_small|^2, |G_big|^2
        self._pending_meta: list[tuple[int, int, int]] = []  # (step, b_small, b_big), known on the host
        self._small: tuple[torch.Tensor, tuple[int, int, int]] | None = None
        self._ddp = self._recording = False

    # ----------------------------------------------------------------- events
    def before_fit(self) -> None:
        self.params = [p for p in self.learn.model.parameters() if p.requires_grad]
        # Under DistributedDataParallel the pair comes free: each rank's own gradient (B_small = its batch)
        # is read from DDP's buckets just before they are all-reduced, the averaged .grad is the big one
        # (B_big = batch x world size). No extra backward pass.
        self._ddp = isinstance(self.learn.train_model, DistributedDataParallel)
        if self._ddp:
            self._local_g2 = torch.zeros((), device=self.learn.device)
            self._recording = False
            self.learn.train_model.register_comm_hook(None, self._comm_hook)

    # No annotations: DDP checks a hook's annotations by identity, and this module's are strings.
    def _comm_hook(self, state, bucket):  # noqa: ANN001, ANN202
        if self._recording:  # the bucket holds this rank's gradient, not yet averaged over ranks
            self._local_g2 += bucket.buffer().detach().float().square().sum()
        return default_hooks.allreduce_hook(None, bucket)

    def before_batch(self) -> None:
        self._small = None

    def before_backward(self) -> None:
        learn = self.learn
        if self._ddp:
            self._recording = learn.training and learn.train_iter % self.every == 0 and bool(self.params)
            if self._recording:
                self._local_g2.zero_()
                world = current().world_size
                self._small = (self._local_g2, (learn.train_iter, len(learn.yb), len(learn.yb) * world))
            return
        if not learn.training or learn.train_iter % self.every or not self.params:
            return
        pred, yb = learn.pred, learn.yb
        b_big = len(yb)
        b_small = self.micro_bs or b_big // self.n_micro
        if not 1 <= b_small < b_big or not pred.requires_grad:
            return  # a batch too small to split (a short last batch): skip it rather than guess
        loss_small = learn.loss_func(pred[:b_small], yb[:b_small])
        grads = torch.autograd.grad(loss_small, self.params, retain_graph=True, allow_unused=True)
        # The 0-based index of the optimizer step this gradient makes, as the Recorder's steps.npz numbers it.
        self._small = (_squared_norm(list(grads), learn.device), (learn.train_iter, b_small, b_big))

    def after_backward(self) -> None:
        if self._small is None:
            return
        g2_small, meta = self._small
        self._small = None
        if self._ddp:
            g2_small, self._recording = g2_small.clone(), False
        g2_big = _squared_norm([p.grad for p in self.params], self.learn.device)
        self._pending_norms.append(torch.stack([g2_small, g2_big]))
        self._pending_meta.append(meta)
        if len(self._pending_norms) >= self.flush_every:
            self._flush()

    def after_cancel_batch(self) -> None:
        self._small = None
        self._recording = False

    def resume_from_run(self, run_dir: Path, at: ResumePoint) -> None:
        """Continue a resumed run's measurements: keep those made before its checkpoint."""
        saved = read_npz(Path(run_dir) / NOISE_SCALE_FILE)
        if saved:
            keep = saved["step"] < at.train_iter
            for key in self._host:
                self._host[key] = saved[key][keep].tolist()

    def after_train(self) -> None:
        self._flush()

    def after_fit(self) -> None:
        if self._ddp and self.learn.exception is not None:
            self._pending_norms, self._pending_meta = [], []  # other ranks may be gone: no all-reduce now
        self._flush()  # also after a crash or a cancelled fit: keep what was measured

    def _flush(self) -> None:
        if not self._pending_norms:
            return
        norms = torch.stack(self._pending_norms)
        if self._ddp:  # E over ranks of each rank's |G_small|^2 (the big one is shared)
            norms[:, 0] = all_reduce(norms[:, 0].contiguous()) / current().world_size
        norms = norms.cpu().double().numpy()  # the one host read per block
        for (step, b_small, b_big), (g2_small, g2_big) in zip(self._pending_meta, norms):
            for key, value in (("step", step), ("b_small", b_small), ("b_big", b_big),
                               ("g2_small", g2_small), ("g2_big", g2_big)):
                self._host[key].append(value)
        self._pending_norms, self._pending_meta = [], []

    # ----------------------------------------------------------------- results
    def _array(self, key: str) -> np.ndarray:
        return np.asarray(self._host[key], dtype=np.int64 if key in ("step", "b_small", "b_big") else np.float64)

    @property
    def steps(self) -> np.ndarray:
        """0-based optimizer step of each measurement (the `step` of steps.npz)."""
        return self._array("step")

    @property
    def g2_small(self) -> np.ndarray:
        return self._array("g2_small")

    @property
    def g2_big(self) -> np.ndarray:
        return self._array("g2_big")

    @property
    def b_small(self) -> np.ndarray:
        return self._array("b_small")

    @property
    def b_big(self) -> np.ndarray:
        return self._array("b_big")

    def _estimates(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._host["step"]:
            return np.zeros(0), np.zeros(0)
        return unbiased_estimates(self.g2_small, self.g2_big, self.b_small, self.b_big)

    @property
    def g2(self) -> np.ndarray:
        """Unbiased estimate of the true gradient's |G|^2 at each measurement (noisy; may be < 0)."""
        return self._estimates()[0]

    @property
    def tr_sigma(self) -> np.ndarray:
        """Unbiased estimate of tr(Sigma), the per-example gradient variance, at each measurement."""
        return self._estimates()[1]

    @property
    def b_simple(self) -> np.ndarray:
        """Running B_simple = EMA(tr Sigma) / EMA(|G|^2) after each measurement (NaN while undefined)."""
        if not self._host["step"]:
            return np.zeros(0)
        return running_b_simple(self.g2_small, self.g2_big, self.b_small, self.b_big, self.beta)[0]

    @property
    def b_simple_mean(self) -> float:
        """mean(tr Sigma) / mean(|G|^2) over every measurement of the run: one number for the whole run."""
        return self.b_simple_window(0.0, 1.0)

    def b_simple_window(self, start: float, stop: float) -> float:
        """Ratio of means over the measurements from fraction `start` to `stop` of those taken.

        B_simple grows as training goes on (|G|^2 shrinks faster than tr Sigma), and the large early
        gradients dominate an EMA for many steps, so `b_simple_window(0.5, 1.0)` is the better number
        for "the noise scale late in this run".
        """
        g2, tr_sigma = self._estimates()
        lo, hi = int(round(start * len(g2))), int(round(stop * len(g2)))
        return ratio_of_means(g2[lo:hi], tr_sigma[lo:hi])

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything measured and derived, as saved in noise_scale.npz."""
        g2, tr_sigma = self._estimates()
        b_simple, g2_ema, tr_ema = (running_b_simple(self.g2_small, self.g2_big, self.b_small, self.b_big,
                                                     self.beta) if len(g2) else (np.zeros(0),) * 3)
        return {"step": self.steps, "g2_small": self.g2_small, "g2_big": self.g2_big, "b_small": self.b_small,
                "b_big": self.b_big, "g2": g2, "tr_sigma": tr_sigma, "g2_ema": g2_ema, "tr_sigma_ema": tr_ema,
                "b_simple": b_simple, "beta": np.float64(self.beta), "every": np.int64(self.every)}

    def save_to_run(self, run_dir: str | Path) -> None:
        """Write noise_scale.npz into `run_dir` (called by RunSaver at each flush point)."""
        if is_main():
            atomic_save_npz(Path(run_dir) / NOISE_SCALE_FILE, self.arrays())
