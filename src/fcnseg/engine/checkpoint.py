"""Checkpoint files: written atomically, read with ``weights_only=True`` (never unpickles code).

A checkpoint is a plain dict of tensors and Python primitives:

    {
      "format": "fcnseg.checkpoint", "version": 1,
      "model": <state_dict>,
      "meta": {                      # everything a predictor needs, nothing about training
        "model_name": "fcn8s",
        "model_kwargs": {"num_classes": 21, "backbone": "vgg16", "geometry": "caffe", ...},
        "class_names": [...], "palette": [[r, g, b], ...],
        "normalization": "imagenet" | "caffe" | "caffe:B,G,R" (fcnseg.data.normalize),
        "fcnseg_version": "0.1.0",
      },
      "train_state": {...} | None,   # optimiser, scheduler, iteration, RNG states, best metric, config
    }
"""

from __future__ import annotations

import os
from typing import Any

from fcnseg.errors import FcnsegError  # noqa: F401
from fcnseg.files import safe_torch_load, save_torch
from fcnseg.weights.format import FORMAT, VERSION, build_model, check, payload  # the format lives below engine


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (see ``fcnseg.files``)."""
    save_torch(obj, path)


def save_checkpoint(path: str | os.PathLike, model_state: dict, meta: dict,
                    train_state: dict | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout)."""
    atomic_save(payload(model_state, meta, train_state), path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate an fcnseg checkpoint; raises FcnsegError with the file name if it is not one."""
    return check(safe_torch_load(path, "checkpoint"), path)


def model_from_checkpoint(ckpt: dict | str | os.PathLike, path_hint: str | None = None):
    """Build the model a checkpoint describes and load its weights. Returns (model, meta)."""
    if not isinstance(ckpt, dict):
        path_hint = str(ckpt)
        ckpt = load_checkpoint(ckpt)
    meta = ckpt["meta"]
    return build_model(meta, ckpt["model"], path_hint or "(in memory)"), meta
