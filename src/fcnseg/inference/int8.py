"""The int8 path: a model quantized with onnxruntime (static QDQ, per-channel weights), calibrated on
the user's own training images, and the runtime that executes it.

    fcnseg quantize --weights runs/x/best.pt --out model.int8.onnx   (--data: default, the training data)
    fcnseg predict  --weights model.int8.onnx photos/ --out preds/
    fcnseg evaluate --weights model.int8.onnx --data folder:DATA

The file is an ONNX model (input ``image``: normalised float32 N x 3 x H x W, dynamic H and W; output
``scores``) whose convolutions read uint8 activations and per-output-channel int8 weights and
accumulate in int32 (AVX512-VNNI / AVX-VNNI / AMX where the CPU has them). Its metadata carries the
checkpoint's meta (key "fcnseg": classes, palette, normalisation) and the quantization record (key
"fcnseg_int8": engine, calibration data, and the architecture and weight digest of the source
checkpoint, so a quantized model is never paired with another checkpoint's weights).

Calibration runs the fp32 model on ``images`` training images (whole images, any size) and records
each activation's range (MinMax). Three choices keep the answers of the fp32 model on every CPU:

* weights use 7 bits (``reduce_range``): onnxruntime's kernels for CPUs without VNNI add pairs of
  uint8 x int8 products in int16 (vpmaddubsw), which can saturate with full 8-bit weights
  (2 x 255 x 127 > 32767; the likely cause of the lower agreement an audit measured on an AVX2
  CPU); with 7-bit weights (2 x 255 x 64 < 32767) every CPU computes the same exact integer sums;
* the first convolution stays fp32 (it reads the image's three channels, each normalised to its
  own range; quantizing them to one 8-bit range cost the most agreement; 3 input channels make it
  a sliver of the work);
* the class-score layers and upsamplers stay fp32: they cost almost nothing and their rounding
  would turn close scores into argmax flips.

On onnxruntime, Caffe-geometry models compute only the image-dependent cells of the trunk's first
layers for each input size met twice (fcnseg.inference.int8_padcache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.files import write_bytes
from fcnseg.inference import export
from fcnseg.weights.format import INT8_KEY  # the int8 record's key, beside the meta key
from fcnseg.weights.meta import as_meta

log = logging.getLogger(__name__)

ENGINE = (
    "onnxruntime static QDQ, per-channel 7-bit weights, uint8 activations (MinMax calibration); "
    "first convolution and class-score layers in fp32"
)
SUFFIX = ".int8.onnx"


def weights_digest(model: nn.Module) -> str:
    """A SHA-256 over the model's state dict (names, shapes, fp32 values): which weights were quantized."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _first_convolution(proto) -> list[str]:
    """The convolution that reads the image: it stays fp32 (3 input channels: a sliver of the work,
    and quantizing the image's three differently scaled channels to one 8-bit range loses the most)."""
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.input[0] == "image" and n.name]


def _unshare_initializers(proto) -> None:
    """Give every weight its own initializer again. The ONNX exporter stores equal tensors once and
    feeds the other layers through Identity nodes (all the zero biases of an untrained net, say);
    the quantizer then hands one layer another's dequantized bias, and onnxruntime, which fuses
    DequantizeLinear -> Conv -> QuantizeLinear into an int8 convolution only where the bias is a
    constant, runs every such layer in fp32 (measured: 5 of FCN-8s VGG16's 15 at random initialisation)."""
    import onnx

    inits = {i.name: i for i in proto.graph.initializer}
    kept = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            proto.graph.initializer.append(copy)
        else:
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)


def _head_nodes(proto, num_classes: int) -> list[str]:
    """Names of the ONNX nodes that produce class scores (score convolutions, upsamplers, fusions)
    and everything downstream of them: they stay in fp32."""
    inits = {i.name: i for i in proto.graph.initializer}
    score_outputs: set[str] = set()
    for node in proto.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            out_dim = 1 if node.op_type == "ConvTranspose" else 0
            if len(dims) == 4 and dims[out_dim] == num_classes:
                score_outputs.update(node.output)
    names = []
    for node in proto.graph.node:  # ONNX nodes are topologically sorted
        if node.name and (set(node.output) & score_outputs or set(node.input) & score_outputs):
            score_outputs.update(node.output)
            names.append(node.name)
    return names


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over normalised float32 batches."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.batches = batches

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"image": batch}

    def rewind(self) -> None:  # MinMax reads once
        pass


def quantize(model: nn.Module, meta: dict, calibration: Iterable[torch.Tensor], *, source: dict | None = None) -> bytes:
    """The int8 ONNX model (bytes) of ``model``, calibrated on ``calibration``: normalised float
    batches (1 x 3 x H x W, any H and W). ``source`` adds to the quantization record."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise FcnsegError("int8 quantization needs the onnx extra; pip install 'fcnseg[onnx]'") from None
    meta = as_meta(meta)
    num_classes = meta.num_classes
    count = [0]

    def batches() -> Iterator[np.ndarray]:
        for x in calibration:
            count[0] += 1
            yield x.float().contiguous().numpy()

    from fcnseg.inference.fastpath import with_export_upsamplers

    model = model.eval().float()  # as the export sees it (the weights' digest below reads these)
    # fixed bilinear upsamplers exported as Resize, other diagonal ones grouped: the same scores, less work
    fp32 = onnx.load_from_string(export.onnx_bytes(with_export_upsamplers(model), meta))
    _unshare_initializers(fp32)
    record = {
        "engine": ENGINE,
        "source": {
            "model_name": meta.model_name,
            "model_kwargs": meta.model_kwargs,
            "weights_sha256": weights_digest(model),
        },
        **(source or {}),
    }
    with tempfile.TemporaryDirectory(prefix="fcnseg-int8-") as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        write_bytes(src, fp32.SerializeToString())
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime's advice to pre-process goes to the root logger
        try:
            quantize_static(
                str(src),
                str(dst),
                _Reader(batches()),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv", "MaxPool", "Relu"],
                nodes_to_exclude=_head_nodes(fp32, num_classes) + _first_convolution(fp32),
                reduce_range=True,  # 7-bit weights: AVX2's u8 x s8 pair sums cannot saturate int16
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        finally:
            root.setLevel(level)
        if count[0] == 0:
            raise FcnsegError("no calibration images; give a --data split with training images")
        proto = onnx.load(str(dst))
    record["calibration"] = {**record.get("calibration", {}), "images": count[0]}
    entry = proto.metadata_props.add()
    entry.key, entry.value = INT8_KEY, json.dumps(record, sort_keys=True)
    return proto.SerializeToString()


def save(data: bytes, path: str | os.PathLike) -> Path:
    """Write an int8 model atomically."""
    return write_bytes(path, data)


def read_record(model_bytes: bytes) -> dict | None:
    """The quantization record of an ONNX model, None for a plain (fp32) export."""
    import onnx

    try:
        proto = onnx.load_from_string(model_bytes)
    except Exception:  # protobuf's DecodeError has no common base
        return None
    text = {p.key: p.value for p in proto.metadata_props}.get(INT8_KEY)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def is_int8_model(path: str | os.PathLike) -> bool:
    """True for a file written by ``fcnseg quantize`` (recognised by its content, whatever its name)."""
    from fcnseg.weights.open import file_kind

    path = Path(path)
    if not path.is_file() or file_kind(path) != "onnx":
        return False
    return read_record(path.read_bytes()) is not None


def check_source(
    record: dict, model_path: str | os.PathLike, meta: dict, model: nn.Module | None, checkpoint: str | os.PathLike
) -> None:
    """FcnsegError unless the int8 model was quantized from this checkpoint's architecture and weights."""
    source = record.get("source", {})
    meta = as_meta(meta)
    arch = (meta.model_name, meta.model_kwargs)
    if (source.get("model_name"), source.get("model_kwargs")) != arch:
        raise FcnsegError(
            f"{model_path} was quantized from a {source.get('model_name')} "
            f"{source.get('model_kwargs')} checkpoint, not {checkpoint} ({arch[0]} {arch[1]}); "
            f"pass its own checkpoint or run `fcnseg quantize --weights {checkpoint}` again"
        )
    if model is not None and source.get("weights_sha256") not in (None, weights_digest(model)):
        raise FcnsegError(
            f"{model_path} was quantized from other weights than {checkpoint}; run "
            f"`fcnseg quantize --weights {checkpoint}` again"
        )


class Int8Model(nn.Module):
    """An int8 model file as a module: normalised float batch -> float32 scores, on ``runtime``
    (default: :func:`default_runtime`). For ``fcnseg evaluate`` and anything else that takes a model."""

    def __init__(self, model_bytes: bytes, threads: int | None = None, runtime: str | None = None) -> None:
        super().__init__()
        from fcnseg.inference import runtimes

        self.runtime = runtime or default_runtime()
        self.run = runtimes.load(self.runtime, model_bytes, threads)
        self.num_classes = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def session(model_bytes: bytes, threads: int | None = None):
    """An onnxruntime CPU session for ``model_bytes`` (fp32 or int8 ONNX)."""
    from fcnseg.inference.runtimes import onnxruntime_session

    return onnxruntime_session(model_bytes, threads)


def read_model(path: str | os.PathLike) -> tuple[bytes, dict, dict]:
    """(model bytes, ModelMeta, quantization record) of an int8 model file (via weights.open_model)."""
    from fcnseg.weights import open_model

    opened = open_model(path)
    if not opened.is_int8:
        raise FcnsegError(f"{path} is not an int8 model from `fcnseg quantize`; quantize the checkpoint first")
    return opened.onnx, opened.meta, opened.int8_record


def load(
    path: str | os.PathLike,
    threads: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    runtime: str | None = None,
) -> tuple[Int8Model, dict, dict]:
    """(module, meta, quantization record) of an int8 model file; with ``checkpoint``, first check
    that the model was quantized from that checkpoint (fcnseg.inference.segmenter.open_source)."""
    from fcnseg.inference.segmenter import open_source

    if checkpoint is not None:
        opened = open_source(checkpoint, int8=path)
        data, meta, record = opened.onnx, opened.meta, opened.int8_record
    else:
        data, meta, record = read_model(path)
    module = Int8Model(data, threads, runtime)
    module.num_classes = meta.num_classes
    return module, meta, record


def calibration_images(
    dataset, count: int, normalization: str, max_side: int | None = None, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Up to ``count`` images of ``dataset`` (an even spread, fixed by ``seed``), each as a normalised
    1 x 3 x H x W batch; images longer than ``max_side`` are scaled down (calibration sees whole
    images, so a huge one would cost memory without changing the ranges much)."""
    from fcnseg.data.normalize import normalize

    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n)[:count] if count < n else np.arange(n)
    for index in sorted(order.tolist()):
        rgb = dataset.load_image(index)
        image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None]
        if max_side and max(image.shape[-2:]) > max_side:
            scale = max_side / max(image.shape[-2:])
            size = [max(1, round(s * scale)) for s in image.shape[-2:]]
            image = (
                torch.nn.functional.interpolate(image.float(), size=size, mode="bilinear", antialias=True)
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        yield normalize(image, normalization)


def quantize_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | None,
    out: str | os.PathLike,
    *,
    split: str | None = None,
    images: int = 32,
    max_side: int | None = 1024,
    mirror: str | None = None,
) -> dict:
    """``fcnseg quantize``: calibrate the model of ``checkpoint`` (any model source with PyTorch
    weights: .pt, .safetensors, published name, .caffemodel, ...) on ``images`` images of ``data``'s
    ``split`` and write the int8 model to ``out``. ``data``/``split`` default to the dataset the
    model was trained on (its ModelMeta). Returns the quantization record."""
    from fcnseg.data import load_dataset
    from fcnseg.weights import open_model

    if images < 1:
        raise FcnsegError(f"--images {images} must be at least 1")
    out = Path(out)
    if out.resolve() == Path(checkpoint).resolve():
        raise FcnsegError(
            f"--out {out} is the checkpoint itself; choose another file (e.g. {Path(checkpoint).stem}{SUFFIX})"
        )
    opened = open_model(checkpoint, mirror=mirror)
    model, meta = opened.require_module("quantize"), opened.meta
    if data is None:
        if not meta.data:
            raise FcnsegError(
                f"{checkpoint} does not record the data it was trained on; give --data SPEC "
                "with training images to calibrate on (e.g. folder:PATH or voc:PATH)"
            )
        data = meta.data
        split = split or meta.train_split
        log.info("calibrating on %s (%s), the data %s was trained on", data, split or "train", checkpoint)
    split = split or "train"
    dataset = load_dataset(data, split).with_modality(meta.modality)  # the input the model takes
    if len(dataset) == 0:
        raise FcnsegError(f"calibration split {split!r} of {data} is empty; give --data/--split with training images")
    classes = meta.num_classes
    if dataset.num_classes != classes:
        raise FcnsegError(
            f"{checkpoint} predicts {classes} classes but {data} ({split}) has "
            f"{dataset.num_classes}; calibrate on the data the model was trained on"
        )
    record = {"calibration": {"data": data, "split": split, "max_side": max_side}}
    batches = calibration_images(dataset, images, meta.normalization, max_side)
    save(quantize(model, meta, batches, source=record), out)
    return read_record(out.read_bytes())


def default_runtime() -> str:
    """The runtime an int8 model runs on unless told (``--backend openvino`` picks the other):
    onnxruntime, installed or not OpenVINO. Measured on FCN-8s VGG16 500x500 (docs/ARCHITECTURE.md,
    "The int8 engine"): on a quiet AVX512-VNNI EPYC onnxruntime ran the int8 file in 488 ms, OpenVINO
    in 705 ms; only onnxruntime gets the per-size int8 head (int8_padcache, 9-18% less time again),
    and with 7-bit weights its integer sums are the same on every CPU, so a model agrees with its
    fp32 source on an AVX2 laptop as it did where it was measured."""
    return "onnxruntime"
