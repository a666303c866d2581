"""How much memory training a model takes, estimated before anything is allocated, and whether it fits.

The estimate has four parts: parameters (and buffers), their gradients, the optimizer's state (AdamW keeps
two tensors per parameter, exp_avg and exp_avg_sq; SGD with momentum one), and the activations autograd
keeps for the backward pass at the batch size. The activations are measured, not guessed: one training-mode
forward pass records, through `torch.autograd.graph.saved_tensors_hooks`, every tensor autograd saves
(each once; parameters, buffers and views of them left out), at batch sizes 2 and 4; the difference is the
cost per image, the rest the part that does not grow with the batch (how close that comes to a real batch:
docs/measurements.md#models-memory). On a model built on the `meta` device this pass
allocates nothing, so a model that needs 100 GB is refused without ever allocating it.

Not counted: the data (already on the device when the check runs, so it is no longer in the free memory),
the short-lived gradients of the backward pass, the validation forward pass (no graph kept; its batches are
shrunk to what this estimate lets fit, by experiments.setup.build_model), allocator slack. The estimate
is what training cannot do without; a run near the limit can still fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from convscope.errors import ConfigError

try:
    import resource  # Unix only; elsewhere there is no address-space limit to read
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

__all__ = ["MemoryEstimate", "available_memory", "check_fits", "estimate_training_memory", "format_bytes"]

# Copies of each trainable parameter the optimizer keeps, by config.OPTIMIZER_NAMES (train/learner.py builds
# AdamW and SGD with momentum 0.9); tests/models/test_memory.py checks the two lists agree.
OPTIMIZER_STATE_COPIES = {"adamw": 2, "sgd": 1}
_OPT_LABELS = {"adamw": "AdamW", "sgd": "SGD momentum"}


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes training needs at batch size `bs` (see the module docstring for what is counted)."""

    bs: int
    opt: str
    params: int  # parameters and buffers
    grads: int  # one per trainable parameter
    opt_state: int
    act_fixed: int  # saved tensors that do not grow with the batch
    act_per_sample: int

    @property
    def activations(self) -> int:
        return self.act_fixed + self.bs * self.act_per_sample

    @property
    def fixed(self) -> int:
        return self.params + self.grads + self.opt_state + self.act_fixed

    @property
    def total(self) -> int:
        return self.fixed + self.bs * self.act_per_sample

    def largest_bs(self, available: int) -> int:
        """The largest batch size whose estimate fits in `available` bytes (0: not even one image)."""
        if self.act_per_sample <= 0:
            return self.bs if self.fixed <= available else 0
        return max(0, (available - self.fixed) // self.act_per_sample)

    def parts(self) -> str:
        opt = _OPT_LABELS.get(self.opt, self.opt)
        return (f"parameters {format_bytes(self.params)}, gradients {format_bytes(self.grads)}, {opt} state "
                f"{format_bytes(self.opt_state)}, activations kept for backward {format_bytes(self.activations)} "
                f"= {format_bytes(self.act_per_sample)} per image")


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Give back the RNG streams, the buffers (BatchNorm running statistics) and the train/eval modes that a
    measuring forward pass changes, so that a measured model trains as an unmeasured one would."""
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers() if b.device.type != "meta"]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for m, training in modes.items():
                m.train(training)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves in one training-mode forward pass of `x`, each counted once."""
    own = {id(t) for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, torch.Tensor] = {}  # holding each tensor keeps its id from being reused by another

    def pack(t: torch.Tensor) -> torch.Tensor:
        # a view of a parameter (a Linear saves its weight transposed) is that parameter's memory, not new
        base = t._base if t._base is not None else t
        if id(base) not in own and id(t) not in seen:
            seen[id(t)] = t
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(x)
    return sum(t.numel() * t.element_size() for t in seen.values())


def estimate_training_memory(model: nn.Module, input_shape: tuple[int, ...], bs: int, opt: str) -> MemoryEstimate:
    """The memory training `model` on images `input_shape` at batch size `bs` with optimizer `opt` needs.

    `model` may live on the `meta` device (nothing is then allocated) or on a real one (two small forward
    passes run there; the model's buffers, modes and the RNG are given back as they were).
    """
    first = next(iter((*model.parameters(), *model.buffers())), None)
    device = first.device if first is not None else torch.device("cpu")
    with _untouched(model):
        small, large = (_saved_bytes(model, torch.zeros(n, *input_shape, device=device)) for n in (2, 4))
    params = [*model.parameters()]  # after the forward pass, which gives lazy modules (LazyLinear) their shapes
    tensors = [*params, *model.buffers()]
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    per_sample = max(0, (large - small) // 2)
    return MemoryEstimate(bs=bs, opt=opt, params=sum(t.numel() * t.element_size() for t in tensors),
                          grads=trainable, opt_state=OPTIMIZER_STATE_COPIES.get(opt, 2) * trainable,
                          act_fixed=max(0, small - 2 * per_sample), act_per_sample=per_sample)


def _proc_bytes(path: Path, key: str) -> int | None:
    """A "Key:   N kB" line of a /proc file, in bytes (None where there is no such file or line)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _meminfo_available() -> int | None:
    return _proc_bytes(Path("/proc/meminfo"), "MemAvailable")


def _address_space_in_use() -> int | None:
    return _proc_bytes(Path("/proc/self/status"), "VmSize")


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes free for training on `device`, where that number comes from), or None where it is unknown.

    CPU: the smaller of MemAvailable (/proc/meminfo) and, when RLIMIT_AS is set, the limit less the address
    space this process already maps. CUDA: the free memory `torch.cuda.mem_get_info` reports plus what
    torch's caching allocator holds but does not use.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, f"free on {device} (torch.cuda.mem_get_info)"
    if device.type != "cpu":
        return None
    found: list[tuple[int, str]] = []
    meminfo = _meminfo_available()
    if meminfo is not None:
        found.append((meminfo, "available on the CPU (MemAvailable in /proc/meminfo)"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS) if resource is not None else (None, None)
    in_use = _address_space_in_use()
    if soft is not None and soft != resource.RLIM_INFINITY and in_use is not None:
        found.append((max(0, soft - in_use), f"left under the address-space limit RLIMIT_AS {format_bytes(soft)} "
                                             f"({format_bytes(in_use)} of it in use)"))
    return min(found) if found else None


def check_fits(estimate: MemoryEstimate, device: torch.device,
               available: Callable[[torch.device], tuple[int, str] | None] | None = None) -> None:
    """ConfigError, with the estimate, its parts, the limit and what to change, when training cannot fit.
    `available` defaults to `available_memory`."""
    limit = (available or available_memory)(device)
    if limit is None or estimate.total <= limit[0]:
        return
    free, where = limit
    fits = estimate.largest_bs(free)
    change = (f"use --bs {fits} or less, or a smaller model" if fits >= 1 else
              "use a smaller model (it does not fit even at --bs 1)")
    raise ConfigError(f"training needs about {format_bytes(estimate.total)} at bs {estimate.bs} "
                      f"({estimate.parts()}), more than the {format_bytes(free)} {where}; {change}")

