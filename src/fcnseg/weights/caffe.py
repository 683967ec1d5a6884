"""Reading ``.caffemodel`` files without Caffe: the protobuf wire format, read directly.

A caffemodel is one serialised ``caffe.NetParameter``. We need only a handful of its fields, all
from caffe.proto:

    NetParameter      layer = 100 (LayerParameter), layers = 2 (V1LayerParameter, older files)
    LayerParameter    name = 1, type = 2 (string), blobs = 7
    V1LayerParameter  name = 4, type = 5 (enum), blobs = 6, layer = 1 (a V0LayerParameter:
                      name = 1, type = 2, blobs = 50)
    BlobProto         shape = 7 (BlobShape: dim = 1), data = 5 (float), double_data = 8,
                      num/channels/height/width = 1..4 (the legacy 4-D shape)

Why not the ``protobuf`` package: it would need caffe.proto compiled to Python (generated code
tied to a protobuf runtime version) for the sake of five fields, and it copies every float into
a Python list. The wire format is small and stable: varints and length-delimited fields. Reading
it directly is ~100 lines with no dependency, and float arrays come out of the file's bytes with
``numpy.frombuffer`` without a copy.

Everything else in the file (layer parameters, solver state, diffs) is skipped. Malformed or
truncated input raises FcnsegError naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fcnseg.errors import FcnsegError


class _Malformed(Exception):
    pass


class CaffeModelDamaged(FcnsegError):
    """The bytes stop being a NetParameter: a truncated or corrupt .caffemodel."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field number, wire type, value): an int for varint/fixed fields, a (start, end)
    slice for length-delimited ones."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = (pos, pos + 8), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            value, pos = (pos, pos + 4), pos + 4
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        if pos > end:
            raise _Malformed("field runs past the end of its message")
        yield number, wire, value


def _floats(raw: bytes, chunks: list[tuple[int, int]], dtype: str) -> np.ndarray:
    if len(chunks) == 1:
        s, e = chunks[0]
        return np.frombuffer(raw, dtype=dtype, count=(e - s) // np.dtype(dtype).itemsize, offset=s)
    return (
        np.concatenate(
            [np.frombuffer(raw, dtype=dtype, count=(e - s) // np.dtype(dtype).itemsize, offset=s) for s, e in chunks]
        )
        if chunks
        else np.zeros(0, dtype)
    )


def _blob(raw: bytes, buf: memoryview, start: int, end: int) -> np.ndarray:
    data: list[tuple[int, int]] = []
    doubles: list[tuple[int, int]] = []
    shape: list[int] = []
    legacy = [0, 0, 0, 0]
    for number, wire, value in _fields(buf, start, end):
        if number == 5 and wire in (2, 5):
            data.append(value)
        elif number == 8 and wire in (1, 2):
            doubles.append(value)
        elif number == 7 and wire == 2:
            for n, w, v in _fields(buf, *value):
                if n == 1 and w == 2:  # packed dims
                    pos, stop = v
                    while pos < stop:
                        dim, pos = _varint(buf, pos, stop)
                        shape.append(dim)
                elif n == 1 and w == 0:
                    shape.append(v)
        elif 1 <= number <= 4 and wire == 0:
            legacy[number - 1] = value
    array = _floats(raw, data, "<f4") if data else _floats(raw, doubles, "<f8").astype(np.float32)
    if not shape and any(legacy):
        shape = legacy
    if shape and int(np.prod(shape)) == array.size:
        array = array.reshape(shape)
    elif shape:
        raise _Malformed(f"blob of shape {shape} holds {array.size} values")
    return array


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)


def _layer(raw: bytes, buf: memoryview, start: int, end: int, name_no: int, type_no: int, blobs_no: int) -> CaffeLayer:
    layer = CaffeLayer("", "")
    for number, wire, value in _fields(buf, start, end):
        if number == name_no and wire == 2:
            layer.name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == type_no:
            layer.type = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace") if wire == 2 else str(value)
        elif number == blobs_no and wire == 2:
            layer.blobs.append(_blob(raw, buf, *value))
        elif (name_no, number, wire) == (4, 1, 2):  # V1 wrapping a V0 layer
            inner = _layer(raw, buf, *value, name_no=1, type_no=2, blobs_no=50)
            layer.name = layer.name or inner.name
            layer.type = layer.type or inner.type
            layer.blobs += inner.blobs
    return layer


def read_caffemodel(path: str | os.PathLike) -> dict[str, CaffeLayer]:
    """The layers of a .caffemodel (``layer`` or V1 ``layers`` format) that hold blobs, by name."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FcnsegError(f"cannot read caffemodel {path}: {exc.strerror}; check the path") from None
    return parse_caffemodel(raw, str(path))


def parse_caffemodel(raw: bytes, label: str = "(in memory)") -> dict[str, CaffeLayer]:
    buf = memoryview(raw)
    layers: dict[str, CaffeLayer] = {}
    try:
        for number, wire, value in _fields(buf, 0, len(raw)):
            if wire != 2 or number not in (100, 2):
                continue
            layer = (
                _layer(raw, buf, *value, name_no=1, type_no=2, blobs_no=7)
                if number == 100
                else _layer(raw, buf, *value, name_no=4, type_no=5, blobs_no=6)
            )
            if layer.blobs:
                layers[layer.name] = layer
    except (_Malformed, ValueError, IndexError) as exc:
        raise CaffeModelDamaged(
            f"caffemodel {label} is truncated or corrupt ({exc}); download it again "
            "(or check that it is a .caffemodel, not a .prototxt)"
        ) from None
    if not layers:
        raise FcnsegError(
            f"{label} holds no Caffe layers with weights; pass a .caffemodel file "
            "(the weights), not a .prototxt (the net description)"
        )
    return layers


def is_caffemodel_head(head: bytes) -> bool:
    """True if ``head`` (a file's first bytes) can start a serialised NetParameter."""
    return head[:1] in (b"\x0a", b"\x12", b"\x1a", b"\x22") or head[:2] == b"\xa2\x06"
