"""Real faults for the reliability tests: a tiny full file system, a read-only folder, the CLI in a
subprocess (so a crash, a bus error or an endless loop shows as what it is), crafted bad files."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@contextmanager
def tmpfs(path: Path, size: str = "200k", read_only: bool = False):
    """A small tmpfs at ``path`` (optionally remounted read-only); the test is skipped, with the
    reason, where mounting is not allowed (not root, or in a container without CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate the fault ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_read_only(path: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount {path} read-only ({done.stderr.strip()})")


def cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m fcnseg ARGS`` in a subprocess (OMP threads capped: the machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fcnseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """Run the CLI in this process (cheaper than a subprocess) and capture it like one."""
    from fcnseg.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors exit
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, and the error is one line holding every fragment."""
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A valid PNG header (IHDR) announcing ``width`` x ``height`` pixels, with almost no data: the
    shape of a decompression bomb, in 60 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def folder_dataset(root: Path, n_train: int = 4, n_val: int = 2, size=(32, 24), classes: int = 3) -> Path:
    """A folder dataset with classes.json (``classes`` classes), stripes of labels 0..classes-1."""
    import json

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = size
            mask = (np.arange(w)[None, :].repeat(h, 0) * classes // w).astype(np.uint8)
            image = (rng.integers(0, 60, (h, w, 3)) + mask[..., None] * 60).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{split}{i}.png")
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{split}{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": [f"c{k}" for k in range(classes)]}))
    return root


def set_mask(path: Path, value: int) -> None:
    """Overwrite a mask with one label everywhere (same size)."""
    with Image.open(path) as img:
        size = img.size
    Image.fromarray(np.full((size[1], size[0]), value, np.uint8), mode="L").save(path)


#: ``torchrun --standalone --nproc_per_node 2 -m fcnseg``: how the tests start a two-process command.
TORCHRUN_FCNSEG = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    "2",
    "-m",
    "fcnseg",
]

TINY_TRAIN = [
    "--model",
    "fcn8s",
    "--width",
    "0.0625",
    "--geometry",
    "same",
    "--num-samples",
    "1",
    "--optimizer",
    "adamw",
    "--lr",
    "1e-3",
    "--no-progress",
]


@contextmanager
def fifo_watchdog(fifo: Path, seconds: float = 60):
    """Yields a dict; if something opens ``fifo`` for reading and blocks, after ``seconds`` the FIFO is
    opened for writing and closed (the reader sees end of file, so the test ends) and
    ``state["opened"]`` is set: assert it stayed False."""
    import threading

    state = {"opened": False}
    done = threading.Event()

    def release():
        while not done.wait(seconds):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only if a reader waits
                state["opened"] = True
            except OSError:
                pass

    watchdog = threading.Thread(target=release, daemon=True)
    watchdog.start()
    try:
        yield state
    finally:
        done.set()


def fake_run(run: Path, **changes) -> Path:
    """A run directory as a stopped `fcnseg train` leaves it (config.yaml + last.pt), without training."""
    from fcnseg.config import TrainConfig, save_config
    from fcnseg.engine.checkpoint import save_checkpoint
    from fcnseg.engine.rng import capture_rng

    cfg = TrainConfig(
        data="shapes",
        model="fcn8s",
        width=0.0625,
        geometry="same",
        optimizer="adamw",
        iterations=2,
        progress=False,
        out=str(run),
        **changes,
    )
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    save_checkpoint(
        run / "last.pt",
        {},
        {"model_name": "fcn8s", "model_kwargs": {"num_classes": 6}},
        {
            "iteration": 2,
            "best_mean_iu": 0.1,
            "best_iteration": 2,
            "optimizer": {},
            "scheduler": {},
            "rng": capture_rng(),
            "config": cfg.to_dict(),
        },
    )
    return run
