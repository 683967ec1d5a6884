"""Random-number state: seeding, saving into checkpoints (weights_only-safe types) and restoring."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """The state of every generator the training loop draws from, as tensors, lists and numbers."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Undo :func:`capture_rng`: the next random draws equal those after the capture."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_cpu(seed: int) -> None:
    """Seed Python, NumPy and torch's CPU generator (not the accelerators': see isolated_rng)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng(seed: int | None = None, only_torch: bool = False) -> Iterator[None]:
    """Run a block without disturbing the global CPU generators (Python, NumPy, torch's CPU
    generator); optionally seed them inside it. For blocks that draw on the CPU, as the training
    augmentation does once per sample: ``torch.manual_seed`` would also seed every accelerator, and
    while CUDA (XPU, MTIA) is not initialised torch formats a stack trace for each such deferred call,
    about a millisecond per sample, as much as generating a `shapes` image.

    ``only_torch``: the block draws from torch's CPU generator alone, so only that one is saved,
    seeded and restored (about 9 us against 100 us for all three, once per training sample)."""
    if only_torch:
        saved_torch = torch.get_rng_state()
        try:
            if seed is not None:
                torch.default_generator.manual_seed(seed)
            yield
        finally:
            torch.set_rng_state(saved_torch)
        return
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        if seed is not None:
            _seed_cpu(seed)
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from several integers (e.g. run seed, epoch, sample index)."""
    words = np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1, np.uint64)
    return int(words[0]) >> 1
