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
from typing import Any

from fcnseg.errors import FcnsegError
from fcnseg.files import safe_torch_load, save_torch

FORMAT = "fcnseg.checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (see ``fcnseg.files``)."""
    save_torch(obj, path)


def save_checkpoint(path: str | os.PathLike, model_state: dict, meta: dict,
                    train_state: dict | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout)."""
    from fcnseg import __version__

    meta = {**meta, "fcnseg_version": __version__}
    atomic_save({"format": FORMAT, "version": VERSION, "model": model_state, "meta": meta,
                 "train_state": train_state}, path)


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
