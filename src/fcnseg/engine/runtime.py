"""Process-group plumbing shared by training and evaluation. The device and precision helpers live
in fcnseg.devices (used by inference too) and are re-exported here for existing callers."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from fcnseg.devices import DTYPES, autocast, autocast_dtype, fast_bf16, prepare_input, resolve_device, resolve_precision  # noqa: F401
from fcnseg.errors import FcnsegError

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
    return list(items[info.rank :: info.world_size])


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_without_teardown(code: int) -> None:
    """End a process that was in a process group as Python's exit would, but with ``os._exit(code)``
    at the end, which skips the interpreter's and C++'s teardown.

    Why: DistributedDataParallel keeps references to the process group that
    ``destroy_process_group`` cannot drop (torch 2.13), so gloo's threads outlive it and are torn
    down with the interpreter, where one two-process training in 139 (measured) aborted
    ("terminate called without an active exception", exit -6) after finishing its work. Everything
    fcnseg writes is closed by then (atomic writes), so nothing is lost by skipping teardown. What
    Python's own exit would still do is done first: finalizers run (a DataLoader's worker processes,
    held in a reference cycle, are shut down), leftover worker processes end as multiprocessing's
    exit handler ends them, and logging is flushed."""
    import gc
    import logging
    import multiprocessing

    gc.collect()
    for child in multiprocessing.active_children():
        if child.daemon:
            child.terminate()
        child.join()
    logging.shutdown()  # flushes every handler
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


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


# ---------------------------------------------------------------------------------------------
# stopping: signals, and failing as one process group


class StopSignals:
    """While active (a ``with`` block in the main thread), SIGTERM and SIGINT only set ``signum``: the
    training loop finishes its step, saves last.pt and stops (see ``requested``). A second Ctrl-C
    interrupts at once, as usual."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def requested(self) -> bool:
        """Whether any process of the group received a stop signal (collective when distributed, so
        every process stops after the same step)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.signum is not None
        t = torch.tensor([float(self.signum or 0)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if self.signum is None and t.item():
            self.signum = int(t.item())
        return bool(t.item())


class RunStopped(FcnsegError):
    """A run stopped on request (a signal) after saving its checkpoint and logging how to resume;
    ``exit_code`` is 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), which the CLI exits with."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


ERROR_KEY = "fcnseg/error"


def _store():
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # noqa: BLE001  (no store reachable: nothing to share)
        return None


def share_error(message: str) -> None:
    """Publish this process's fatal error to the process group's store (the first one wins), so the
    other processes, whose collectives now fail, exit with the same line instead of a gloo traceback."""
    store = _store()
    if store is None:
        return
    try:
        store.compare_set(ERROR_KEY, "", message)
    except Exception:  # noqa: BLE001
        pass


def peer_error(wait_s: float = 10.0) -> str | None:
    """The error another process published with ``share_error`` (waiting up to ``wait_s`` for it), or None."""
    import datetime

    store = _store()
    if store is None:
        return None
    try:
        store.wait([ERROR_KEY], datetime.timedelta(seconds=wait_s))
        value = store.get(ERROR_KEY).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001  (timed out, or the store went away)
        return None
    return value or None


@contextlib.contextmanager
def fail_together() -> Iterator[None]:
    """Around a distributed command: a process that fails publishes its one-line error; a process
    whose collective then breaks (the peer is gone) raises that same line as FcnsegError. Every
    process of the group so exits with one line naming the fault (exit 2), not a gloo traceback."""
    try:
        yield
    except RunStopped:
        raise
    except FcnsegError as exc:
        share_error(str(exc))
        raise
    except OSError as exc:  # the CLI prints these as one line too: share that line
        from fcnseg.files import os_error_message

        share_error(os_error_message(exc))
        raise
    except Exception as exc:  # noqa: BLE001
        if not (dist.is_available() and dist.is_initialized()):
            raise
        message = peer_error()
        rank = current_dist().rank
        if message is None:  # this process failed first, with something other than a user mistake
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            share_error(f"process of rank {rank} failed ({type(exc).__name__}: {first}); see its traceback")
            raise
        raise FcnsegError(message) from None
