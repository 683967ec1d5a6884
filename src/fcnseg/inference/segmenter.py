"""Segmenter: a trained FCN ready to label images of any size.

    seg = Segmenter.from_checkpoint("runs/voc/best.pt")     # or .safetensors / .onnx
    seg = Segmenter.from_pretrained("fcn8s-voc")            # published weights, by name or file
    mask = seg.predict("photo.jpg")                          # H x W class ids at the photo's size
    probs = seg.predict_proba(image_array)                   # C x H x W probabilities
    print(seg.describe())

Everything comes from the checkpoint's metadata (model, classes, palette, normalisation). Options:
sliding-window tiles, flip / multi-scale test-time augmentation, shift-and-stitch, and the backend
(PyTorch, with the bf16 fast path on CPUs that support it, or onnxruntime).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fcnseg.data.normalize import normalize
from fcnseg.errors import FcnsegError
from fcnseg.inference import export, fastpath
from fcnseg.inference.image_io import DEFAULT_MAX_PIXELS, ImageInput, load_image
from fcnseg.inference.shift_stitch import shift_and_stitch, subsampled
from fcnseg.inference.window import sliding_window, tta

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
AUTO_TILE = 1024          # tile=None: images with more pixels than AUTO_TILE_PIXELS use these tiles
AUTO_TILE_PIXELS = 2_250_000


class Segmenter:
    """Predict class masks and probabilities with a trained model (see the module docstring).

    ``fast=None`` turns the bf16 fast path on where the CPU supports it; a model passed in
    directly is then converted in place (bf16 weights, channels_last). ``compile=True`` adds
    torch.compile with weight freezing: faster per call, but each new input shape compiles first.
    """

    def __init__(self, model: nn.Module | None, meta: dict, *, fast: bool | None = None,
                 backend: str = "torch", onnx_model: bytes | None = None, tile: int | None = None,
                 overlap: float = 0.25, tta_flip: bool = False, scales: Sequence[float] = (1.0,),
                 shift_stitch: int | bool | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 threads: int | None = None, compile: bool = False) -> None:
        if backend not in BACKENDS:
            raise FcnsegError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if tile is not None and tile < 0:
            raise FcnsegError(f"--tile {tile} must be positive (0 = whole image)")
        if not 0 <= overlap < 1:
            raise FcnsegError(f"--overlap {overlap} must be in [0, 1)")
        if any(s <= 0 for s in scales):
            raise FcnsegError(f"--scales {scales} must all be positive")
        if shift_stitch is True:  # the model's own output stride
            shift_stitch = getattr(model, "output_stride", None) or meta.get("output_stride")
            if not shift_stitch:
                raise FcnsegError("this model does not state its output stride; give --stitch-factor F")
        if shift_stitch not in (None, False) and int(shift_stitch) < 1:
            raise FcnsegError(f"--shift-stitch {shift_stitch} must be a positive stride")
        self.meta = meta
        self.num_classes = int(meta["model_kwargs"]["num_classes"])
        self.class_names = list(meta.get("class_names") or [str(i) for i in range(self.num_classes)])
        self.palette = [tuple(c) for c in meta.get("palette") or []]
        self.normalization = meta.get("normalization", "imagenet")
        self.backend = backend
        self.tile, self.overlap = tile, overlap
        self.tta_flip, self.scales = tta_flip, tuple(float(s) for s in scales)
        self.shift_stitch = int(shift_stitch) if shift_stitch else None
        self.max_pixels = max_pixels
        self.fast = False
        self.compiled = compile and backend == "torch"
        if backend == "torch":
            if model is None:
                raise FcnsegError("backend 'torch' needs a model; pass a .pt or .safetensors checkpoint")
            self.fast = fastpath.fast_path_supported() if fast is None else bool(fast)
            self.model = fastpath.prepare_model(model, self.fast, self.num_classes)
            if compile:
                self.model = fastpath.Compiled(self.model)
        else:
            self.model = model
            self._session = _ort_session(onnx_model if onnx_model is not None
                                         else export.onnx_bytes(model, meta), threads)
        log.info("%s", self.describe())

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, backend: str | None = None,
                        **options) -> "Segmenter":
        """Load a ``.pt`` checkpoint, an exported ``.safetensors`` or an ``.onnx`` file.

        ``backend`` defaults to "onnxruntime" for .onnx files and "torch" otherwise; asking for
        onnxruntime with a PyTorch checkpoint exports it to ONNX in memory first.
        """
        from fcnseg.engine.checkpoint import model_from_checkpoint

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            if backend not in (None, "onnxruntime"):
                raise FcnsegError(f"{path} is an ONNX model; use --backend onnxruntime or pass the "
                                  ".pt checkpoint")
            if not path.is_file():
                raise FcnsegError(f"ONNX model {path} does not exist; check the path")
            data = path.read_bytes()
            return cls(None, export.onnx_meta(data, path), backend="onnxruntime", onnx_model=data,
                       **options)
        if suffix == ".safetensors":
            state, meta = export.load_safetensors(path)
            source = {"model": state, "meta": meta}
        else:
            if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes zip archives
                raise FcnsegError(f"{path} is not an fcnseg checkpoint; pass a .pt file written by "
                                  "`fcnseg train`, or a .safetensors/.onnx file from `fcnseg export`")
            source = path
        try:
            model, meta = model_from_checkpoint(source, str(path))
        except FcnsegError as exc:  # e.g. "unknown model": say which file asked for it
            if str(path) in str(exc):
                raise
            raise FcnsegError(f"checkpoint {path}: {exc}") from None
        return cls(model, meta, backend=backend or "torch", **options)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, backend: str | None = None,
                        mirror: str | None = None, **options) -> "Segmenter":
        """Published weights by name (downloaded and verified once; see `fcnseg weights list`), or
        any weights file: .caffemodel, pytorch-fcn or torchvision .pth, fcnseg .pt/.safetensors/.onnx."""
        from fcnseg.weights import is_registered, load

        if not is_registered(name_or_path) and Path(name_or_path).suffix.lower() in (".onnx", ".safetensors"):
            return cls.from_checkpoint(name_or_path, backend=backend, **options)
        model, meta = load(name_or_path, mirror=mirror)
        return cls(model, meta, backend=backend or "torch", **options)

    # ----------------------------------------------------------------------------- prediction

    def predict(self, image: ImageInput) -> np.ndarray:
        """HxW class ids (uint8, or int32 above 256 classes) at the input image's size."""
        return self.segment(image)[0]

    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """CxHxW float32 class probabilities at the input image's size."""
        rgb = load_image(image, self.max_pixels)
        probs = np.empty((self.num_classes, *rgb.shape[:2]), dtype=np.float32)
        self.segment(rgb, probs_out=probs)
        return probs

    def segment(self, image: ImageInput, probs_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mask, rgb): the class-id mask and the HxWx3 uint8 image it belongs to.

        ``probs_out`` (C x H x W, any float dtype, e.g. a float16 memmap) is filled with the
        probabilities as they are computed, so large images never hold them twice.
        """
        rgb = load_image(image, self.max_pixels)
        height, width = rgb.shape[:2]
        mask = np.empty((height, width), dtype=np.uint8 if self.num_classes <= 256 else np.int32)

        def sink(y0: int, probs: torch.Tensor) -> None:
            rows = slice(y0, y0 + probs.shape[1])
            mask[rows] = probs.argmax(0).numpy()
            if probs_out is not None:
                probs_out[:, rows] = probs.numpy()

        image_t = torch.from_numpy(rgb).permute(2, 0, 1)
        tile = self._tile_for(height, width)
        sliding_window(self._tile_probs, image_t, self.num_classes, tile or max(height, width),
                       self.overlap, sink)
        return mask, rgb

    def _tile_for(self, height: int, width: int) -> int:
        if self.tile is None:
            return AUTO_TILE if height * width > AUTO_TILE_PIXELS else 0
        return self.tile

    def _tile_probs(self, tile_uint8: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) uint8 -> (1, C, h, w) probabilities with TTA and shift-and-stitch applied."""
        x = normalize(tile_uint8, self.normalization)
        fn = self._probs
        if self.shift_stitch and self.shift_stitch > 1:
            f = self.shift_stitch
            fn = lambda t, base=fn: shift_and_stitch(subsampled(base, f), t, f)  # noqa: E731
        return tta(fn, self.tta_flip, self.scales)(x)

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities of the backend for a normalised float batch."""
        if self.backend == "torch":
            scores = fastpath.run_model(self.model, x, self.fast)
        else:
            (scores,) = self._session.run(["scores"], {"image": x.float().contiguous().numpy()})
            scores = torch.from_numpy(scores)
        return scores.softmax(1)

    # ----------------------------------------------------------------------------- reporting

    def describe(self) -> str:
        """One line saying what runs and how (model, backend, fast path, tiling, TTA)."""
        parts = [f"{self.meta['model_name']} ({self.num_classes} classes, {self.normalization} "
                 "normalisation)"]
        if self.backend == "onnxruntime":
            parts.append("onnxruntime CPU fp32")
        elif self.fast:
            parts.append(f"torch fast path: bf16 weights (fp32 score head) + channels_last + inference_mode "
                         f"({fastpath.fast_path_reason()})")
        else:
            reason = "disabled" if fastpath.fast_path_supported() else fastpath.fast_path_reason()
            parts.append(f"torch fp32 + inference_mode (fast path off: {reason})")
        if self.compiled:
            parts[-1] += " + torch.compile (freezing)"
        if self.tile is None:
            parts.append(f"whole image, tiles of {AUTO_TILE} above {AUTO_TILE_PIXELS / 1e6:.2f} MP")
        elif self.tile == 0:
            parts.append("whole image")
        else:
            parts.append(f"tiles {self.tile}px, overlap {self.overlap:.2f}")
        if self.tta_flip or self.scales != (1.0,):
            parts.append(f"TTA: flip={'on' if self.tta_flip else 'off'}, scales="
                         + ",".join(f"{s:g}" for s in self.scales))
        if self.shift_stitch and self.shift_stitch > 1:
            parts.append(f"shift-and-stitch x{self.shift_stitch}")
        return " | ".join(parts)


def _ort_session(model_bytes: bytes, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise FcnsegError("backend onnxruntime needs the onnx extra; pip install 'fcnseg[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
