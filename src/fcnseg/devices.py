"""Device and precision helpers shared by training, evaluation and inference (below engine/ and
inference/, so neither reaches into the other for them): the one --device check, the autocast
precision and whether bf16 is fast here, moving a uint8 batch to the device normalised, and how the
CPU's heap treats the memory a training step or a forward pass frees."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from pathlib import Path

import torch

from fcnseg.config import device_problem
from fcnseg.data.normalize import normalize
from fcnseg.errors import FcnsegError

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
            raise FcnsegError(
                f"{option} {name!r} requested but CUDA is not available ({why}); use --device cpu (or auto)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FcnsegError(f"{option} {name!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision for inference on ``device``: bf16 where supported, else fp16 (CUDA)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def onednn_cap_allows_bf16() -> bool:
    """False when ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA) caps oneDNN below native bf16
    (e.g. AVX2, AVX512_CORE_VNNI): its bf16 kernels are then emulated, several times slower than fp32."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap in ("", "ALL", "DEFAULT") or any(tag in cap for tag in ("BF16", "AMX", "FP16", "AVX10"))


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is the fast path here: a GPU with bf16, or a CPU with AVX512-BF16 or AMX
    (after $FCNSEG_CPU_ISA) that oneDNN is allowed to use."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_bf16_flags()) and onednn_cap_allows_bf16()


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
ISA_ENV = "FCNSEG_CPU_ISA"
# CPU classes, lowest first, and the /proc/cpuinfo flags each one adds: FCNSEG_CPU_ISA=<class> makes
# fcnseg treat the CPU as if it had no more than that (as ONEDNN_MAX_CPU_ISA does for oneDNN's kernels),
# so the paths and choices of a lesser CPU can be run and measured on a better one.
ISA_CLASSES = {
    "avx2": ("avx2", "fma"),
    "avx512": ("avx512f",),
    "avx512_vnni": ("avx512_vnni", "avx_vnni"),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
}


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (from /proc/cpuinfo; empty where unknown), capped by $FCNSEG_CPU_ISA."""
    flags = _cpuinfo_flags()
    cap = os.environ.get(ISA_ENV, "").strip().lower()
    if not cap or cap == "native":
        return flags
    if cap not in ISA_CLASSES:
        raise FcnsegError(f"{ISA_ENV}={cap!r} is not a CPU class; use one of native, {', '.join(ISA_CLASSES)}")
    names = list(ISA_CLASSES)
    above = {f for name in names[names.index(cap) + 1 :] for f in ISA_CLASSES[name]}
    return frozenset(
        f
        for f in flags
        if f not in above
        and not (f.startswith("avx512") and cap == "avx2")
        and not (f.startswith("amx") and cap != "amx")
    )


def cpu_isa() -> str:
    """A short description of the CPU class, e.g. "AVX2+AVX512+VNNI+BF16 (no AMX)"."""
    flags = cpu_flags()
    have = [
        ("AVX2", "avx2" in flags),
        ("AVX512", "avx512f" in flags),
        ("VNNI", bool({"avx512_vnni", "avx_vnni"} & flags)),
        ("BF16", bool(set(BF16_CPU_FLAGS) & flags)),
        ("AMX", "amx_tile" in flags),
    ]
    text = "+".join(name for name, ok in have if ok) or "no AVX2"
    missing = [name for name, ok in have if not ok]
    text += f" (no {'/'.join(missing)})" if missing else ""
    capped = os.environ.get(ISA_ENV, "").strip().lower()
    return text + (f" [{ISA_ENV}={capped}]" if capped and capped != "native" else "")


def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 CPU features present (after $FCNSEG_CPU_ISA)."""
    flags = cpu_flags()
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


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


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's allocation failures: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError, MemoryError."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "DefaultCPUAllocator" in text or "can't allocate memory" in text or "out of memory" in text.lower()
    )


# glibc's mallopt parameters (malloc.h) and the values keep_freed_cpu_memory sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_HEAP_SETTINGS = (
    (_M_MMAP_MAX, 0),  # every block from the heap, none mmap'd on its own (glibc mmaps any block over
    # 32 MiB at the latest and unmaps it when freed: an fp32 VGG16 activation at 500x500 is 125 MB)
    (_M_TRIM_THRESHOLD, -1),  # never give freed heap back to the system (a full-size training step
    # frees over 2 GiB at the heap's top, more than any finite threshold mallopt accepts)
    (_M_TOP_PAD, 64 << 20),  # grow the heap 64 MiB at a time
)
KEEP_MEMORY_ENV = "FCNSEG_KEEP_FREED_MEMORY"  # 0 leaves the C library's allocator as it is


@functools.cache
def keep_freed_cpu_memory() -> bool:
    """Make glibc's allocator keep the memory that a training step or a forward pass frees for the
    next one, instead of handing it back to the system and faulting it in again, page by page, at the
    next one's allocations. `train`, `evaluate` and :class:`Segmenter` call it on CPU.

    Measured in alternating processes, glibc's default against these settings, FCN-8s VGG16 at
    500x500 in fp32 under the AVX2 caps: fcnseg's forward faulted 40,000-49,000 pages a call (70-80 ms
    of system time), 727-765 -> 693-766 ms; plain PyTorch's 380,000-400,000, 2.37-2.39 -> 1.74-1.83 s
    (natively 1.45-1.63 -> 1.07-1.10 s); a folder of 20 photos in VOC's sizes 13.3-15.5 -> 12.2-13.7 s;
    a full-size training step (batch 1) 11.8-12.4 -> 10.2-10.3 s (natively 6.0 -> 3.6-3.8 s), 840,000
    faults -> none. The demo's step (batch 16): 1,300-3,400 faults -> 0-92 (60.8 -> 56.8 ms). The
    cost: memory a process has freed stays in it, so its resident size stays at its peak
    ($FCNSEG_KEEP_FREED_MEMORY=0 leaves glibc's default). Process-wide and idempotent; True where it
    took effect (Linux with glibc, the variable not 0), else False."""
    choice = os.environ.get(KEEP_MEMORY_ENV, "").strip().lower() or "1"  # unset or empty: the default
    if choice not in ("0", "1"):
        raise FcnsegError(
            f"{KEEP_MEMORY_ENV}={choice!r}: use 1 (keep freed memory, the default) or 0 (leave the allocator as it is)"
        )
    if choice == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: leave their allocator alone
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _HEAP_SETTINGS)
