"""Names or files, to local paths and models: what every command and ``create_model`` call goes through.

resolve("fcn8s-voc")            -> ~/.cache/fcnseg/weights/fcn8s-heavy-pascal.caffemodel (downloaded once)
resolve("my.caffemodel")        -> my.caffemodel (an existing file is used as it is)
load("fcn8s-voc")               -> (model in eval mode, ModelMeta)   torch weights via open_model
convert("x.caffemodel", "x.pt") -> an ordinary fcnseg checkpoint (weights_only, metadata inside)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fcnseg.errors import FcnsegError
from fcnseg.weights.registry import REGISTRY, get_entry, unknown_message

log = logging.getLogger(__name__)


def is_registered(name_or_path: str | os.PathLike) -> bool:
    return isinstance(name_or_path, str) and name_or_path in REGISTRY


def resolve(
    name_or_path: str | os.PathLike, *, mirror: str | None = None, progress: bool | None = None, kind: str | None = None
) -> Path:
    """A local file for a registered weights name (downloaded and verified once) or an existing path."""
    from fcnseg.weights.download import download

    if is_registered(name_or_path):
        return download(get_entry(str(name_or_path)), mirror=mirror, progress=progress)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    raise FcnsegError(unknown_message(str(name_or_path), kind))


def resolve_entry(name_or_path: str | os.PathLike, *, mirror: str | None = None, progress: bool | None = None):
    """(registry entry or None, local path) of a model source. A registered name is downloaded once;
    a file keeps the entry of the published file it is (same name, in the weights cache) so its
    classes and palette are known. Backbones and entries fcnseg cannot run yet are refused here."""
    entry = get_entry(str(name_or_path)) if is_registered(name_or_path) else None
    if entry is not None and entry.kind == "backbone":
        raise FcnsegError(
            f"{entry.name!r} are ImageNet backbone weights, not a segmentation model; pass "
            f"them as --backbone-weights {entry.name} (or backbone_weights=) when training"
        )
    if entry is not None and not entry.runnable:
        raise FcnsegError(f"{entry.name!r} cannot be run by fcnseg yet: {entry.note}")
    path = resolve(name_or_path, mirror=mirror, progress=progress)
    if entry is None:  # a published file under its published name: take its classes and palette
        entry = next(
            (e for e in REGISTRY.values() if e.kind == "model" and e.runnable and e.filename == path.name), None
        )
    return entry, path


def load(
    name_or_path: str | os.PathLike,
    *,
    model: str | None = None,
    mirror: str | None = None,
    progress: bool | None = None,
):
    """(torch model in eval mode, ModelMeta) for any model source (see :func:`open_model`)."""
    from fcnseg.weights.open import open_model

    opened = open_model(name_or_path, model=model, mirror=mirror, progress=progress)
    return opened.require_module("a PyTorch model"), opened.meta


def backbone_file(name_or_path: str | os.PathLike, *, mirror: str | None = None, progress: bool | None = None) -> Path:
    """The local file for ``backbone_weights``: a registered backbone name or a path."""
    if is_registered(name_or_path) and get_entry(str(name_or_path)).kind != "backbone":
        raise FcnsegError(
            f"{name_or_path!r} is a trained segmentation model, not backbone weights; pass "
            "it as --weights (predict/evaluate), or use a backbone such as vgg16"
        )
    return resolve(name_or_path, mirror=mirror, progress=progress, kind="backbone")


def convert(
    source: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None, mirror: str | None = None
) -> Path:
    """Convert a registered name or a weights file into an fcnseg checkpoint at ``out``."""
    from fcnseg.files import save_torch
    from fcnseg.weights.format import payload

    out = Path(out)
    if out.exists() and Path(source).expanduser().exists() and out.resolve() == Path(source).expanduser().resolve():
        raise FcnsegError(f"--out {out} is the input file; choose another output path")
    net, meta = load(source, model=model, mirror=mirror)
    save_torch(payload(net.state_dict(), meta), out)
    return out


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    weights: str | os.PathLike | None = None,
    backbone_weights=None,
    **kwargs,
):
    """Build a model: the one public ``create_model`` (``fcnseg.create_model``, ``fcnseg.models.create_model``).

    Without ``weights``: ``fcnseg.models.build_model`` (see its docstring for every model name and
    option), with a registered backbone name (e.g. "vgg16") accepted for ``backbone_weights``.
    With ``weights`` (a registered name or a file of any supported format) the architecture and
    class count come from the weights; ``num_classes`` and other options, if given, must agree
    with them. The model's ModelMeta is ``model.fcnseg_meta``.
    """
    from fcnseg.models import build_model, model_entry

    if weights is not None:
        model, meta = load(weights, model=name)
        found = meta.model_kwargs
        if meta.model_name != name:
            raise FcnsegError(
                f"weights {weights} are a {meta.model_name}, not a {name}; "
                f"use create_model({meta.model_name!r}, weights=...)"
            )
        for key, value in {"num_classes": num_classes, **kwargs}.items():
            if value is not None and key in found and found[key] != value:
                raise FcnsegError(
                    f"weights {weights} have {key}={found[key]!r}, not {value!r}; "
                    f"leave {key} out to take it from the weights"
                )
        model.fcnseg_meta = meta
        return model
    if num_classes is None:
        raise FcnsegError("create_model needs num_classes (or weights= to take it from trained weights)")
    if (
        isinstance(backbone_weights, str)
        and model_entry(name).takes_backbone_weights
        and (is_registered(backbone_weights) or not Path(backbone_weights).expanduser().exists())
    ):
        backbone_weights = backbone_file(backbone_weights)  # a name, or a missing file: "did you mean"
    return build_model(name, num_classes, backbone_weights=backbone_weights, **kwargs)
