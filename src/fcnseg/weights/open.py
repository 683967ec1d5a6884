"""The one front door for models: ``open_model(source)`` for a registered name or any file we read.

    open_model("fcn8s-voc")                -> OpenedModel (downloaded and verified once)
    open_model("runs/x/best.pt")           -> OpenedModel(meta=ModelMeta(...), module=<FCN>, ...)
    open_model("model.int8.onnx")          -> OpenedModel(module=None, onnx=b"...", int8_record={...})

What kind of file a path holds is decided once, by content (never by suffix), in :func:`file_kind`:

    "torch"        a zip archive (torch.save): fcnseg checkpoint, pytorch-fcn / torchvision state dict
    "torch-legacy" torch.save's old pickle format (starts with a pickle protocol byte)
    "safetensors"  8-byte header length + JSON header (fcnseg export, or a bare state dict)
    "onnx"         an ONNX ModelProto (fp32 export or int8 model from `fcnseg quantize`)
    "caffe"        a Caffe NetParameter (.caffemodel)
    "html", "empty", "unknown"

Every loader dispatches on that kind; a damaged file is named with the format it really has and
the one command that replaces it (``fcnseg weights download NAME --force`` for cached published
weights). Layer: weights (no inference imports; ONNX files are returned as bytes, not run).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcnseg.errors import FcnsegError
from fcnseg.weights.meta import ModelMeta

log = logging.getLogger(__name__)

FORMAT_NAMES = {
    "torch": "PyTorch file",
    "torch-legacy": "PyTorch file (legacy format)",
    "safetensors": "safetensors file",
    "onnx": "ONNX model",
    "caffe": "Caffe model",
}
SUPPORTED = (
    "a registered name (`fcnseg weights list`), an fcnseg .pt or .safetensors, an fp32 or int8 "
    ".onnx, a .caffemodel, a pytorch-fcn or torchvision .pth"
)


class DamagedFile(FcnsegError):
    """A file of a known format that cannot be read whole (truncated, corrupt)."""


@dataclass
class OpenedModel:
    """A runnable model and its metadata: a torch ``module``, or ``onnx`` bytes (+ ``int8_record``
    for a model from `fcnseg quantize`) for the onnxruntime / OpenVINO backends."""

    meta: ModelMeta
    module: Any = None  # torch.nn.Module in eval mode, or None for ONNX files
    onnx: bytes | None = None
    int8_record: dict | None = None
    kind: str = "registry"  # file_kind of the file it came from
    label: str = ""  # how messages name it (the path or registered name)
    path: Path | None = None

    @property
    def is_onnx(self) -> bool:
        return self.onnx is not None

    @property
    def is_int8(self) -> bool:
        return self.int8_record is not None

    def require_module(self, what: str):
        """The torch module, or FcnsegError saying ``what`` needs PyTorch weights, not ONNX."""
        if self.module is None:
            kind = "an int8 ONNX model" if self.is_int8 else "an ONNX model"
            raise FcnsegError(
                f"{self.label} is {kind}; {what} needs PyTorch weights: pass the .pt, "
                ".safetensors or published weights it was made from"
            )
        return self.module


# ----------------------------------------------------------------------------- what kind of file


def file_kind(path: str | os.PathLike, what: str = "model file") -> str:
    """The format of the file at ``path``, from its first bytes (see the module docstring).
    FcnsegError for a path that does not exist, is a folder or is not a regular file."""
    from fcnseg.files import check_input_file, read_error

    path = Path(path)
    check_input_file(path, what)
    try:
        with open(path, "rb") as f:
            return kind_of_bytes(f.read(64))
    except OSError as exc:
        raise read_error(path, exc) from None


def kind_of_bytes(head: bytes) -> str:
    """The format whose first bytes are ``head`` (see the module docstring)."""
    from fcnseg.weights.caffe import is_caffemodel_head

    if not head:
        return "empty"
    if head[:2] == b"PK":
        return "torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    if head[8:10] in (b'{"', b"{}", b"{ ", b"{\n"):  # u64 header length, then the JSON header
        return "safetensors"
    if head.lstrip()[:1] == b"<":
        return "html"
    if head[:1] == b"\x08":  # ModelProto: ir_version (field 1, varint) comes first
        return "onnx"
    if is_caffemodel_head(head):
        return "caffe"
    return "unknown"


# ----------------------------------------------------------------------------- the front door


def open_model(
    source: str | os.PathLike, *, model: str | None = None, mirror: str | None = None, progress: bool | None = None
) -> OpenedModel:
    """The model at ``source``: a registered name (downloaded and verified once) or a file of any
    supported format, recognised by content. ``model`` names the architecture where a file cannot
    tell it apart (fcn8s vs fcn8s-atonce). Errors are one FcnsegError line naming the source."""
    from fcnseg.weights.api import resolve_entry
    from fcnseg.weights.download import replace_hint

    entry, path = resolve_entry(source, mirror=mirror, progress=progress)
    label = str(source) if entry is not None and str(source) == entry.name else str(path)
    return _open_file(path, label, model=model, entry=entry, replace=replace_hint(path))


def _damaged(path: Path, kind: str, detail: str, fix: str) -> DamagedFile:
    """ "PATH looks like a Caffe model but is truncated at byte N" (+ ``fix``, e.g. ": download it again")."""
    where = f" at byte {path.stat().st_size}" if detail == "truncated" else ""
    return DamagedFile(f"{path} looks like a {FORMAT_NAMES[kind]} but is {detail}{where}{fix}")


def _open_file(path: Path, label: str, *, model: str | None, entry, replace: str | None) -> OpenedModel:
    """``replace``: how to replace a damaged file of the weights cache (None for the user's own)."""
    from fcnseg.weights import format as ckpt_format
    from fcnseg.weights import loaders

    kind = file_kind(path)
    fix = f": {replace}" if replace else _FIXES.get(kind, "")
    if kind in ("torch", "torch-legacy"):
        obj = _read_torch(path, kind, fix)
        if ckpt_format.is_checkpoint(obj):
            ckpt = ckpt_format.check(obj, path)
            meta = ModelMeta.from_dict(ckpt["meta"], f"checkpoint {path}")
            if model and model != meta.model_name:
                raise FcnsegError(
                    f"{label} holds a {meta.model_name}, not a {model}; drop --model or pass the matching file"
                )
            net = ckpt_format.build_model(meta, ckpt["model"], label)
            return OpenedModel(meta, net.eval(), kind=kind, label=label, path=path)
        net, meta = loaders.from_state_dict(obj, label, model=model, entry=entry)
        return OpenedModel(meta, net, kind=kind, label=label, path=path)
    if kind == "safetensors":
        state, header = _read_safetensors(path, fix)
        if ckpt_format.META_KEY in header:
            meta = ModelMeta.from_dict(_json(header[ckpt_format.META_KEY], path, "safetensors"), str(path))
            net = ckpt_format.build_model(meta, state, label)
            return OpenedModel(meta, net.eval(), kind=kind, label=label, path=path)
        net, meta = loaders.from_state_dict(state, label, model=model, entry=entry)
        return OpenedModel(meta, net, kind=kind, label=label, path=path)
    if kind == "onnx":
        data = path.read_bytes()
        props = _onnx_props(data, path, fix)
        if ckpt_format.META_KEY not in props:
            raise FcnsegError(
                f"{path} is an ONNX model without fcnseg metadata; it was not written by "
                "`fcnseg export` or `fcnseg quantize`: export the model again"
            )
        meta = ModelMeta.from_dict(_json(props[ckpt_format.META_KEY], path, "onnx"), str(path))
        record = _json(props[ckpt_format.INT8_KEY], path, "int8") if ckpt_format.INT8_KEY in props else None
        return OpenedModel(meta, None, onnx=data, int8_record=record, kind=kind, label=label, path=path)
    if kind == "caffe":
        from fcnseg.weights.caffe import CaffeModelDamaged, parse_caffemodel

        try:
            layers = parse_caffemodel(path.read_bytes(), str(path))
        except CaffeModelDamaged:
            raise _damaged(path, kind, "truncated", fix) from None
        net, meta = loaders.from_reference(
            {n: layer.blobs for n, layer in layers.items()}, "caffe", label, model=model, entry=entry
        )
        return OpenedModel(meta, net, kind=kind, label=label, path=path)
    if kind == "html":
        raise FcnsegError(
            f"{path} is an HTML page, not a model file (a download that returned a web page?); "
            + (replace or f"pass {SUPPORTED}")
        )
    if kind == "empty":
        raise DamagedFile(f"{path} is empty (0 bytes), not a model file" + (fix or f"; pass {SUPPORTED}"))
    raise FcnsegError(f"{path} is not a model file fcnseg reads (unknown format); pass {SUPPORTED}")


_FIXES = {
    "torch": ": save or download it again",
    "torch-legacy": ": save or download it again",
    "safetensors": ": export or download it again",
    "onnx": ": export it again with `fcnseg export`",
    "caffe": ": download it again (or check it is a .caffemodel, not a .prototxt)",
    "html": "",
    "empty": "",
    "unknown": "",
}


def _read_torch(path: Path, kind: str, fix: str) -> Any:
    from fcnseg.files import safe_torch_load

    if kind == "torch":
        try:
            intact = zipfile.is_zipfile(path)
        except OSError as exc:
            raise FcnsegError(f"cannot read {path}: {exc.strerror}") from None
        if not intact:
            raise _damaged(path, kind, "truncated", fix)
    return safe_torch_load(path, "model file")  # its own one-line errors for damage inside the file


def _read_safetensors(path: Path, fix: str) -> tuple[dict, dict]:
    from fcnseg.files import read_safetensors

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length)) if 8 + length <= size else None
        end = (
            max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if isinstance(header, dict)
            else None
        )
    except (ValueError, KeyError, TypeError, IndexError, struct.error):
        end = None
    if end is None or 8 + length + end > size:
        raise _damaged(path, "safetensors", "truncated", fix)
    return read_safetensors(path, "model file")


def _onnx_props(data: bytes, path: Path, fix: str) -> dict:
    try:
        import onnx
    except ImportError:
        raise FcnsegError(f"reading ONNX model {path} needs the onnx extra; pip install 'fcnseg[onnx]'") from None
    try:
        proto = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001  (protobuf's DecodeError has no common base)
        raise _damaged(path, "onnx", "truncated", fix) from None
    if not proto.graph.node:
        raise _damaged(path, "onnx", "truncated", fix)
    return {p.key: p.value for p in proto.metadata_props}


def _json(text: str, path: Path, fmt: str) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise FcnsegError(f"{path} has unreadable fcnseg metadata ({fmt}); export it again with `fcnseg export`")
    return value
