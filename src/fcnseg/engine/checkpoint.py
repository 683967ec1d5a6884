"""Checkpoint files: written atomically, read with ``weights_only=True`` (never unpickles code).

A checkpoint is a plain dict of tensors and Python primitives:

    {
      "format": "fcnseg.checkpoint", "version": 1,
      "model": <state_dict>,
      "meta": {                      # everything a predictor needs, nothing about training
        "model_name": "fcn8s",
        "model_kwargs": {"num_classes": 21, "backbone": "vgg16", "geometry": "caffe", ...},
        "class_names": [...], "palette": [[r, g, b], ...],
        "normalization": "imagenet" | "caffe",
        "fcnseg_version": "0.1.0",
      },
      "train_state": {...} | None,   # optimiser, scheduler, iteration, RNG states, best metric, config
    }
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from fcnseg.errors import FcnsegError

FORMAT = "fcnseg.checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` through a temporary file in the same folder and a rename.

    A crash, kill or full disk leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise FcnsegError(f"cannot write {path}: {exc.strerror}; choose a writable directory") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FcnsegError(f"cannot write {path}: {exc.strerror}; free disk space or choose a "
                          f"writable directory (the previous file, if any, is intact)") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, model_state: dict, meta: dict,
                    train_state: dict | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout)."""
    from fcnseg import __version__

    meta = {**meta, "fcnseg_version": __version__}
    atomic_save({"format": FORMAT, "version": VERSION, "model": model_state, "meta": meta,
                 "train_state": train_state}, path)


def safe_torch_load(path: str | os.PathLike, what: str = "weights file") -> Any:
    """torch.load with weights_only=True; every failure becomes one FcnsegError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FcnsegError(f"{what} {path} does not exist; check the path")
    if not zipfile.is_zipfile(path) and not _is_legacy_torch_file(path):
        raise FcnsegError(f"{what} {path} is corrupt or truncated, or not a PyTorch file at all; "
                          "pass a .pt/.pth written by torch.save (download or save it again)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise FcnsegError(f"{what} {path} holds objects that cannot be loaded safely "
                          f"(weights_only=True refused: {first}); re-save it as a plain state_dict") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FcnsegError(f"{what} {path} is corrupt or truncated ({first[:120]}); "
                          "download or save it again") from None


def _is_legacy_torch_file(path: Path) -> bool:
    """Files from torch.save(..., _use_new_zipfile_serialization=False) start with a pickle protocol byte."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate an fcnseg checkpoint; raises FcnsegError with the file name if it is not one."""
    ckpt = safe_torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FcnsegError(f"{path} is not an fcnseg checkpoint (no '{FORMAT}' marker); pass a file "
                          "written by `fcnseg train` (plain weights go to --backbone-weights)")
    if ckpt.get("version", 0) > VERSION:
        raise FcnsegError(f"checkpoint {path} has format version {ckpt['version']}, newer than this "
                          f"fcnseg understands ({VERSION}); upgrade fcnseg")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | os.PathLike, path_hint: str | None = None):
    """Build the model a checkpoint describes and load its weights. Returns (model, meta)."""
    from fcnseg.models import create_model

    if not isinstance(ckpt, dict):
        path_hint = str(ckpt)
        ckpt = load_checkpoint(ckpt)
    meta = ckpt["meta"]
    model = create_model(meta["model_name"], **meta["model_kwargs"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise FcnsegError(f"checkpoint {path_hint or '(in memory)'} does not match model "
                          f"{meta['model_name']} ({str(exc).splitlines()[0][:160]})") from None
    return model, meta
