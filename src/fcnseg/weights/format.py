"""The fcnseg checkpoint format, below engine so that converters and the trainer write the same thing.

A checkpoint is a plain dict of tensors and primitives (read with weights_only=True):
``{"format": "fcnseg.checkpoint", "version": 1, "model": state_dict, "meta": {...},
"train_state": {...} | None}``; see fcnseg.engine.checkpoint for the fields of ``meta``.
"""

from __future__ import annotations

import os
from typing import Any

from fcnseg.errors import FcnsegError

FORMAT = "fcnseg.checkpoint"
VERSION = 1


def payload(model_state: dict, meta: dict, train_state: dict | None = None) -> dict:
    from fcnseg import __version__
    from fcnseg.files import content_digest

    body = {"model": model_state, "meta": {**meta, "fcnseg_version": __version__}, "train_state": train_state}
    return {"format": FORMAT, "version": VERSION, **body, "digest": content_digest(body)}


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def check(obj: Any, path: str | os.PathLike) -> dict:
    """``obj`` if it is a checkpoint this fcnseg understands, else FcnsegError naming ``path``."""
    if not is_checkpoint(obj):
        raise FcnsegError(f"{path} is not an fcnseg checkpoint (no '{FORMAT}' marker); pass a file "
                          "written by `fcnseg train`, or see `fcnseg weights convert` for other formats")
    version = obj.get("version", 0)
    if isinstance(version, int) and version > VERSION:
        raise FcnsegError(f"checkpoint {path} has format version {obj['version']}, newer than this "
                          f"fcnseg understands ({VERSION}); upgrade fcnseg")
    problem = structure_problem(obj)
    if not problem and "digest" in obj:  # older checkpoints have none and still load
        from fcnseg.files import content_digest

        body = {k: obj.get(k) for k in ("model", "meta", "train_state")}
        if obj["digest"] != content_digest(body):
            raise FcnsegError(f"checkpoint {path} is corrupt: its contents no longer match the digest saved "
                              "with them (bytes changed on disk); use another checkpoint (e.g. the run's best.pt) "
                              "or copy it again")
    if problem:
        raise FcnsegError(f"checkpoint {path} has the fcnseg marker but {problem}; it is damaged or was not "
                          "written by `fcnseg train`: use another checkpoint (e.g. the run's best.pt or last.pt)")
    return obj


def structure_problem(ckpt: dict) -> str | None:
    """What is missing from a checkpoint that everything reading it relies on, or None."""
    meta = ckpt.get("meta")
    if not isinstance(ckpt.get("model"), dict):
        return "no weights ('model' is missing)"
    if not isinstance(meta, dict):
        return "no metadata ('meta' is missing)"
    if not isinstance(meta.get("model_name"), str):
        return "no model name in its metadata"
    kwargs = meta.get("model_kwargs")
    if not isinstance(kwargs, dict) or not isinstance(kwargs.get("num_classes", 0), int):
        return "no valid model options in its metadata"
    from fcnseg.config import MAX_CLASSES

    if not 1 <= kwargs.get("num_classes", 1) <= MAX_CLASSES:
        return f"it claims {kwargs['num_classes']} classes (fcnseg models have 1 to {MAX_CLASSES})"
    train_state = ckpt.get("train_state")
    if train_state is not None:
        missing = ([k for k in ("iteration", "optimizer", "scheduler", "rng") if k not in train_state]
                   if isinstance(train_state, dict) else ["train_state"])
        if missing:
            return f"an incomplete training state (no {', '.join(missing)})"
    return None


def build_model(meta: dict, state: dict, label: str):
    """The model ``meta`` describes, with ``state`` loaded strictly."""
    from fcnseg.models import create_model

    model = create_model(meta["model_name"], **meta["model_kwargs"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FcnsegError(f"checkpoint {label} does not match model {meta['model_name']} "
                          f"({str(exc).splitlines()[0][:160]})") from None
    return model
