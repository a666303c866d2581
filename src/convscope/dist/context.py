"""Which process this is in a torch.distributed job, and the collectives convscope uses.

Every function works unchanged in a single process (world size 1, rank 0), so the rest of convscope
calls them without asking whether it runs distributed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from convscope.errors import ConfigError, ConvscopeError

T = TypeVar("T")

# How long a collective waits for a rank before failing. A rank that dies closes its sockets and the
# others fail at once; this bounds the case of a rank that hangs without dying.
_COLLECTIVE_TIMEOUT = timedelta(seconds=120)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets the env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_env() -> DistInfo:
    """This process's rank as torchrun's environment says, before (or without) any process group."""
    if not launched_by_torchrun():
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def is_main() -> bool:
    return current().is_main


def init_from_env(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the job torchrun started (NCCL on CUDA, gloo on the CPU); returns this rank and its device.

    Outside torchrun this does nothing and returns (DistInfo(), device). On CUDA each rank takes the GPU
    of its local rank.
    """
    if not launched_by_torchrun():
        return DistInfo(), device
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                              "start at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"multi-process training runs on cpu or cuda, not {device.type}")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=_COLLECTIVE_TIMEOUT, **kwargs)
    info = DistInfo(dist.get_rank(), world, local_rank)
    return info, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce ('sum' or 'max') over all ranks; a no-op in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def refuse_under_torchrun(command: str) -> None:
    """Commands that compare whole trainings in one process say so instead of hanging under torchrun."""
    if launch_env().distributed:
        raise ConfigError(f"{command} runs in a single process; start it without torchrun/--nproc "
                          "(it trains many short runs and compares them, which does not split across ranks)")


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give every rank its result (e.g. the run folder rank 0 created).

    If `fn` raises a ConvscopeError on rank 0, every rank raises one with the same message, so no rank
    waits for a result that will never come.
    """
    info = current()
    if not info.distributed:
        return fn()
    box: list[Any] = [None]
    if info.is_main:
        try:
            box[0] = ("ok", fn())
        except ConvscopeError as exc:
            box[0] = ("error", type(exc).__name__, str(exc))
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        cls = next((c for c in ConvscopeError.__subclasses__() if c.__name__ == box[0][1]), ConvscopeError)
        raise cls(box[0][2])
    return box[0][1]
