"""The fcnseg checkpoint format, below engine so that converters and the trainer write the same thing.

A checkpoint is a plain dict of tensors and primitives (read with weights_only=True):
``{"format": "fcnseg.checkpoint", "version": 1, "model": state_dict, "meta": {...},
"train_state": {...} | None}``; ``meta`` is :meth:`fcnseg.weights.meta.ModelMeta.to_dict`.
Exports carry the same dict as JSON under ``META_KEY`` (safetensors header, ONNX metadata_props);
int8 models add their quantization record under ``INT8_KEY``.
"""

from __future__ import annotations

import os
from typing import Any

from fcnseg.errors import FcnsegError

FORMAT = "fcnseg.checkpoint"
VERSION = 1
META_KEY = "fcnseg"  # exports: the ModelMeta dict as JSON
INT8_KEY = "fcnseg_int8"  # int8 models: the quantization record as JSON


def payload(model_state: dict, meta, train_state: dict | None = None) -> dict:
    """The checkpoint dict; ``meta`` is a ModelMeta (or a dict of any layout ModelMeta reads)."""
    from fcnseg import __version__
    from fcnseg.files import content_digest
    from fcnseg.weights.meta import as_meta

    meta = as_meta(meta).with_(fcnseg_version=__version__).to_dict()
    body = {"model": model_state, "meta": meta, "train_state": train_state}
    return {"format": FORMAT, "version": VERSION, **body, "digest": content_digest(body)}


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def check(obj: Any, path: str | os.PathLike) -> dict:
    """``obj`` if it is a checkpoint this fcnseg understands, else FcnsegError naming ``path``."""
    if not is_checkpoint(obj):
        raise FcnsegError(
            f"{path} is not an fcnseg checkpoint (no '{FORMAT}' marker); pass a file "
            "written by `fcnseg train`, or see `fcnseg weights convert` for other formats"
        )
    version = obj.get("version", 0)
    if isinstance(version, int) and version > VERSION:
        raise FcnsegError(
            f"checkpoint {path} has format version {obj['version']}, newer than this "
            f"fcnseg understands ({VERSION}); upgrade fcnseg"
        )
    problem = structure_problem(obj)
    if not problem and "digest" in obj:  # older checkpoints have none and still load
        from fcnseg.files import content_digest

        body = {k: obj.get(k) for k in ("model", "meta", "train_state")}
        if obj["digest"] != content_digest(body):
            raise FcnsegError(
                f"checkpoint {path} is corrupt: its contents no longer match the digest saved "
                "with them (bytes changed on disk); use another checkpoint (e.g. the run's best.pt) "
                "or copy it again"
            )
    if problem:
        raise FcnsegError(
            f"checkpoint {path} has the fcnseg marker but {problem}; it is damaged or was not "
            "written by `fcnseg train`: use another checkpoint (e.g. the run's best.pt or last.pt)"
        )
    return obj


def structure_problem(ckpt: dict) -> str | None:
    """What is missing from a checkpoint that everything reading it relies on, or None."""
    from fcnseg.weights.meta import ModelMeta

    meta = ckpt.get("meta")
    if not isinstance(ckpt.get("model"), dict):
        return "no weights ('model' is missing)"
    if not isinstance(meta, dict):
        return "no metadata ('meta' is missing)"
    try:
        ModelMeta.from_dict(meta)
    except FcnsegError as exc:
        return str(exc).split(" has ", 1)[-1].split(";")[0]
    kwargs = meta["model_kwargs"]
    from fcnseg.config import MAX_CLASSES

    if not 1 <= kwargs.get("num_classes", 1) <= MAX_CLASSES:
        return f"it claims {kwargs['num_classes']} classes (fcnseg models have 1 to {MAX_CLASSES})"
    train_state = ckpt.get("train_state")
    if train_state is not None:
        missing = (
            [k for k in ("iteration", "optimizer", "scheduler", "rng") if k not in train_state]
            if isinstance(train_state, dict)
            else ["train_state"]
        )
        if missing:
            return f"an incomplete training state (no {', '.join(missing)})"
    return None


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def build_model(meta, state: dict, label: str):
    """The model ``meta`` (a ModelMeta) describes, with ``state`` loaded strictly; a tensor that is
    missing, extra or of another shape is named.

    The model is built on the meta device (shapes only, about 10 ms) and takes ``state``'s tensors
    as its own: drawing random initial weights first, then copying over them, would be wasted (FCN-8s
    VGG16: about 0.9 s of each command's start, and a second copy of the weights in memory). So the
    model shares ``state``'s tensors (of the model's dtype): pass a state that is not kept for
    anything else."""
    import torch

    from fcnseg.models import build_model as build
    from fcnseg.weights.meta import as_meta

    meta = as_meta(meta, label)
    try:
        with torch.device("meta"):
            model = build(meta.model_name, **meta.model_kwargs)
    except FcnsegError as exc:  # e.g. "unknown model": say which file asked for it
        raise FcnsegError(f"{label}: {exc}") from None
    own = model.state_dict()
    for key, value in state.items():
        if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
            raise FcnsegError(
                f"{label}: tensor {key} has shape {_shape(value)}, model {meta.model_name} "
                f"{_kwargs_text(meta)} expects {_shape(own[key])}; the weights do not belong "
                "to this model (damaged metadata?)"
            )
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        what = f"has no tensor {missing[0]}" if missing else f"has a tensor {extra[0]} that the model lacks"
        more = len(missing) + len(extra) - 1
        raise FcnsegError(
            f"{label} {what}{f' (and {more} more differences)' if more else ''}; it does not "
            f"match model {meta.model_name} {_kwargs_text(meta)}"
        )
    # every tensor is in ``state`` (checked above): the model takes them as they are, in its dtypes
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict (a non-persistent buffer): models must not have one
        raise FcnsegError(f"{label}: model {meta.model_name} has tensors no state dict holds ({', '.join(left)})")
    return model


def _kwargs_text(meta) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in meta.model_kwargs.items()) + ")"
