"""Device, precision and process-group plumbing shared by training and evaluation."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from fcnseg.config import device_problem
from fcnseg.data.normalize import normalize
from fcnseg.errors import FcnsegError

T = TypeVar("T")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """The one device check of train, evaluate and predict: 'auto' (or None) -> cuda where available,
    else cpu; 'cpu', 'cuda' and 'cuda:N' must exist here. Anything else is one FcnsegError naming ``option``."""
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(text)
    if problem:
        raise FcnsegError(f"{option} {problem}, got {name!r}")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise FcnsegError(f"{option} {name!r} requested but CUDA is not available ({why}); "
                              "use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FcnsegError(f"{option} {name!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision for inference on ``device``: bf16 where supported, else fp16 (CUDA)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is the fast path here: a GPU with bf16, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where :func:`fast_bf16`, else 'fp32'; other values pass through."""
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16/fp16 (a no-op for fp32)."""
    if precision not in DTYPES:
        raise FcnsegError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def prepare_input(images: torch.Tensor, mode: str, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> normalised float on ``device`` (channels_last if asked)."""
    x = normalize(images.to(device, non_blocking=True), mode)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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
