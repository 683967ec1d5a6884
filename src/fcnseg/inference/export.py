"""Export a trained model: ONNX (dynamic height and width) and safetensors (no pickle).

Both formats carry the checkpoint's ``meta`` (model name and options, class names, palette,
normalisation) as JSON: in the ONNX model's ``metadata_props`` under key "fcnseg", and in the
safetensors header metadata under the same key. The ONNX graph takes a normalised float32 batch
``image`` (N, 3, H, W) and returns the raw class scores ``scores`` (N, C, H, W).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.files import read_safetensors, write_bytes
from fcnseg.weights.format import META_KEY
from fcnseg.weights.meta import ModelMeta, as_meta

ONNX_OPSET = 17


def export_meta(model: nn.Module, meta: ModelMeta | dict) -> ModelMeta:
    """The model's ModelMeta plus its output stride (needed by shift-and-stitch without torch)."""
    stride = getattr(model, "output_stride", None)
    return as_meta(meta).with_(output_stride=int(stride) if stride else None)


def _encode_meta(meta: ModelMeta) -> str:
    return json.dumps(meta.to_dict(), sort_keys=True)


def _decode_meta(text: str | None, path: Path, fmt: str) -> ModelMeta:
    try:
        meta = json.loads(text) if text else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or "model_name" not in meta:
        raise FcnsegError(
            f"{path} has no fcnseg metadata; it was not written by `fcnseg export --format {fmt}`, export it again"
        )
    return ModelMeta.from_dict(meta, str(path))


def onnx_bytes(model: nn.Module, meta: ModelMeta | dict, sample_size: tuple[int, int] = (64, 64)) -> bytes:
    """The model as a serialised ONNX ModelProto with dynamic batch, height and width."""
    import onnx

    model = model.eval().float().to(memory_format=torch.contiguous_format)
    sample = torch.zeros(1, getattr(model, "in_channels", 3), *sample_size)  # 6: the late-fusion models
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected
        torch.onnx.export(
            model,
            (sample,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": axes, "scores": axes},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, _encode_meta(export_meta(model, meta))
    return proto.SerializeToString()


def export_onnx(model: nn.Module, meta: ModelMeta | dict, path: str | os.PathLike) -> Path:
    """Write the model as ONNX (metadata embedded) to ``path``."""
    return write_bytes(path, onnx_bytes(model, meta))


def export_safetensors(model: nn.Module, meta: ModelMeta | dict, path: str | os.PathLike) -> Path:
    """Write the weights as safetensors with the metadata as JSON in the header."""
    from safetensors.torch import save

    state = {
        k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.detach().clone()
        for k, v in model.state_dict().items()
    }
    return write_bytes(path, save(state, metadata={META_KEY: _encode_meta(export_meta(model, meta))}))


def load_safetensors(path: str | os.PathLike) -> tuple[dict, ModelMeta]:
    """Read (state_dict, meta) from a file written by :func:`export_safetensors` (no pickle involved)."""
    path = Path(path)
    state, header = read_safetensors(path)
    return state, _decode_meta(header.get(META_KEY), path, "safetensors")


class OnnxModel(nn.Module):
    """An exported .onnx model as a torch module: normalised float batch in, raw scores out, run on
    onnxruntime (CPU). Lets `fcnseg evaluate` measure an exported file exactly as it will be used."""

    def __init__(self, model_bytes: bytes, meta: ModelMeta | dict, threads: int | None = None):
        super().__init__()
        from fcnseg.inference.runtimes import onnxruntime_session as _ort_session

        self.meta = as_meta(meta)
        self.num_classes = self.meta.num_classes
        self._session = _ort_session(model_bytes, threads)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> tuple[OnnxModel, ModelMeta]:
        """(module, meta) of an fp32 ONNX export; any model file: fcnseg.weights.open_model."""
        from fcnseg.weights import open_model

        opened = open_model(path)
        if not opened.is_onnx:
            raise FcnsegError(f"{path} is not an ONNX model (it holds PyTorch weights); load it with open_model")
        try:
            return cls(opened.onnx or b"", opened.meta), opened.meta
        except ImportError:
            raise FcnsegError(f"running {path} needs the onnx extra; pip install 'fcnseg[onnx]'") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (scores,) = self._session.run(["scores"], {"image": x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(scores).to(x.device)
