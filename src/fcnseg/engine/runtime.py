"""Process-group plumbing shared by training and evaluation. The device and precision helpers live
in fcnseg.devices (used by inference too) and are re-exported here for existing callers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from fcnseg.devices import (DTYPES, autocast, autocast_dtype, fast_bf16, prepare_input,  # noqa: F401
                             resolve_device, resolve_precision)

T = TypeVar("T")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@dataclass
class Dist:
    """This process's place in the (possibly trivial) process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def current_dist() -> Dist:
    """The already-initialised process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Dist()


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); else single process."""
    if dist.is_available() and dist.is_initialized():
        return current_dist()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    info = current_dist()
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every world_size-th one from its rank (all of them in a
    single process), so across the process group each item is handled exactly once."""
    info = current_dist()
    return list(items[info.rank::info.world_size])


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every process (e.g. 'stop now')."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, src=0)
    return bool(t.item())
