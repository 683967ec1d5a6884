"""Segmenter: a trained FCN ready to label images of any size.

    seg = Segmenter.from_pretrained("runs/voc/best.pt")     # any source: .pt, .safetensors, .onnx, ...
    seg = Segmenter.from_pretrained("fcn8s-voc")            # published weights by name (from_checkpoint: alias)
    mask = seg.predict("photo.jpg")                          # H x W class ids at the photo's size
    probs = seg.predict_proba(image_array)                   # C x H x W probabilities
    masks = seg.predict(["a.jpg", pil_image, tensor_chw])    # a list in, a list out
    print(seg.describe())

Everything comes from the checkpoint's metadata (model, classes, palette, normalisation). Options:
sliding-window tiles, flip / multi-scale test-time augmentation, shift-and-stitch, and the backend
(PyTorch, with the bf16 fast path on CPUs that support it, or onnxruntime).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fcnseg.data.normalize import normalize
from fcnseg.devices import autocast_dtype, keep_freed_cpu_memory, resolve_device
from fcnseg.errors import FcnsegError
from fcnseg.inference import export, fastpath, runtimes
from fcnseg.inference.image_io import DEFAULT_MAX_PIXELS, ImageInput, image_list, load_image
from fcnseg.inference.overlap_tile import PAPER_TILE, output_tile, overlap_tile
from fcnseg.inference.shift_stitch import shift_and_stitch, subsampled
from fcnseg.inference.window import sliding_window, tta
from fcnseg.weights.meta import ModelMeta, as_meta

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
AUTO_TILE = 1024  # tile=None: images with more pixels than AUTO_TILE_PIXELS use these tiles
AUTO_TILE_PIXELS = 2_250_000


class Segmenter:
    """Predict class masks and probabilities with a trained model.

    Usage::

        import fcnseg

        seg = fcnseg.Segmenter.from_pretrained("runs/8s/best.pt")   # any name or model file
        mask = seg.predict("photo.jpg")          # H x W class ids (uint8) at the photo's size
        probs = seg.predict_proba(pil_image)     # C x H x W float32 probabilities
        masks = seg.predict([path, array_hwc, tensor_chw])   # one result per image, in order
        masks = seg.predict(batch_nchw)          # N x C x H x W tensor: a list of N masks
        print(seg.class_names, seg.describe())

        cm = fcnseg.ConfusionMatrix(seg.num_classes)         # score against your own labels
        cm.update(mask, truth)                               # numpy arrays or tensors
        print(cm.compute()["mean_iu"])

    Inputs: a file path, a PIL image, a numpy array (H x W x 3, or H x W greyscale; uint8, 16-bit
    or floats in [0, 1]), a torch tensor (C x H x W; uint8 or floats in [0, 1]), or a list of any of
    those; an N x C x H x W tensor or N x H x W x 3 array counts as a list. Same-size images of a
    list run as one batch (up to ``batch_size``) when the image needs no tiling.

    Constructor options (``from_pretrained`` passes them through):

    * ``model``, ``meta``: the network and its :class:`fcnseg.weights.ModelMeta` (or a metadata dict
      of any layout: model name, classes, palette, normalisation); ``from_pretrained`` reads both.
    * ``device``: "auto" (default: cuda where available, else cpu), "cpu", "cuda" or "cuda:N";
      checked like ``fcnseg train --device``. On a GPU, prediction runs under autocast (bf16, or
      fp16 where the GPU lacks bf16) with channels_last.
    * ``fast``: the CPU bf16 fast path (bf16 weights, channels_last); None = where the CPU runs bf16
      natively. A model passed in directly is then converted in place. Ignored on a GPU.
    * ``backend``: "torch" (default), "onnxruntime" (CPU; needs the [onnx] extra) or "openvino"
      (CPU; needs the [openvino] extra).
    * ``onnx_model``: serialised ONNX bytes (fp32 export or int8 model) for the onnxruntime or
      openvino backend (default: export ``model``).
    * ``tile``: sliding-window tile size in pixels; None = whole image up to 2.25 MP, 1024-pixel
      tiles above; 0 = always the whole image. ``overlap``: tile overlap fraction in [0, 1).
      The unpadded U-Net (``unet-valid``, torch backend) predicts by overlap-tile instead: output
      tiles of ``tile`` pixels (None = the paper's 388, rounded down to 4 + 16k), mirrored borders,
      exactly the whole mirrored image's result; 0 = one forward over the whole mirrored image.
    * ``tta_flip``, ``scales``: test-time augmentation, averaging the horizontal flip and these
      input scales (e.g. (0.75, 1, 1.25)).
    * ``shift_stitch``: shift-and-stitch (paper Section 3.2) with this stride; True = the model's
      output stride. Costs stride^2 forward passes.
    * ``max_pixels``: refuse larger images (decompression-bomb guard; default 100 megapixels).
    * ``threads``: onnxruntime / OpenVINO threads (default: torch's thread count).
    * ``int8_record``: the quantization record of an int8 ``onnx_model`` (from ``fcnseg quantize``;
      :meth:`from_pretrained` fills it in), shown by :meth:`describe`.
    * ``compile``: torch.compile with weight freezing; faster per call, each new shape compiles first.

    On CPU, constructing one sets the process's C allocator to keep the memory a forward frees
    (:func:`fcnseg.devices.keep_freed_cpu_memory`: no page faults at the next call, resident size at its
    peak); ``FCNSEG_KEEP_FREED_MEMORY=0`` in the environment leaves the allocator as it is.
    """

    def __init__(
        self,
        model: nn.Module | None,
        meta: ModelMeta | dict,
        *,
        fast: bool | None = None,
        backend: str = "torch",
        onnx_model: bytes | None = None,
        tile: int | None = None,
        overlap: float = 0.25,
        tta_flip: bool = False,
        scales: Sequence[float] = (1.0,),
        shift_stitch: int | bool | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        compile: bool = False,
        device: str | torch.device = "auto",
        int8_record: dict | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise FcnsegError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if tile is not None and tile < 0:
            raise FcnsegError(f"--tile {tile} must be positive (0 = whole image)")
        if not 0 <= overlap < 1:
            raise FcnsegError(f"--overlap {overlap} must be in [0, 1)")
        if any(s <= 0 for s in scales):
            raise FcnsegError(f"--scales {scales} must all be positive")
        meta = as_meta(meta)
        if meta.modality != "rgb":  # photos have no depth to make HHA from
            raise FcnsegError(
                f"{meta.model_name} takes {meta.modality} input (NYUDv2 depth), not colour photos; "
                "evaluate it with `fcnseg evaluate --data nyud:PATH`, or use a colour model to segment photos"
            )
        if shift_stitch is True:  # the model's own output stride
            shift_stitch = getattr(model, "output_stride", None) or meta.output_stride
            if not shift_stitch:
                raise FcnsegError("this model does not state its output stride; give --stitch-factor F")
        if shift_stitch not in (None, False) and int(shift_stitch) < 1:
            raise FcnsegError(f"--shift-stitch {shift_stitch} must be a positive stride")
        self.meta = meta
        self.num_classes = meta.num_classes
        self.class_names = meta.names
        self.palette = [tuple(c) for c in meta.palette]
        self.normalization = meta.normalization
        self.backend = backend
        self.tile, self.overlap = tile, overlap
        self.tta_flip, self.scales = tta_flip, tuple(float(s) for s in scales)
        self.shift_stitch = int(shift_stitch) if shift_stitch else None
        self.max_pixels = max_pixels
        self.fast = False
        self.compiled = compile and backend == "torch"
        self.device = _inference_device(device, backend)
        if self.device.type == "cpu":
            keep_freed_cpu_memory()  # each forward reuses the last one's memory (no page faults)
        self.int8_record = int8_record
        # the unpadded U-Net labels tile by tile from mirrored context (inference/overlap_tile.py)
        self.overlap_tile = backend == "torch" and not compile and hasattr(model, "forward_valid") and tile != 0
        if self.overlap_tile and (tta_flip or self.scales != (1.0,) or self.shift_stitch):
            raise FcnsegError(
                "unet-valid predicts by overlap-tile, without TTA or shift-and-stitch; "
                "drop those options or pass tile=0 (--tile 0) to run the whole mirrored image"
            )
        if backend == "torch":
            if model is None:
                raise FcnsegError("backend 'torch' needs a model; pass a .pt or .safetensors checkpoint")
            if self.device.type == "cuda":
                self.model = model.eval().to(self.device, memory_format=torch.channels_last)
            else:
                self.fast = fastpath.fast_path_supported() if fast is None else bool(fast)
                self.model = fastpath.prepare_model(  # torch.compile traces the plain layers
                    model, self.fast, self.num_classes, pad_constants=not compile, use_winograd=not compile
                )
            if compile:
                self.model = fastpath.Compiled(self.model)
        else:
            self.model = model
            self._run = runtimes.load(
                backend, onnx_model if onnx_model is not None else export.onnx_bytes(model, meta), threads
            )
        log.info("%s", self.describe())

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        backend: str | None = None,
        int8: str | os.PathLike | None = None,
        mirror: str | None = None,
        **options,
    ) -> Segmenter:
        """Any model source: a published name (downloaded and verified once; `fcnseg weights list`)
        or a file recognised by its content, whatever its name: fcnseg .pt / .safetensors, fp32 or
        int8 .onnx, .caffemodel, pytorch-fcn or torchvision .pth (see fcnseg.weights.open_model).

        ``backend`` defaults to "onnxruntime" for ONNX files (int8 models too: int8.default_runtime)
        and "torch" otherwise; asking for onnxruntime with PyTorch weights exports them to
        ONNX in memory first. ``int8``: run this int8 model of ``source`` (it must have been
        quantized from that architecture and weights). Every other keyword is a constructor option
        (``device``, ``fast``, ``tile``, ``overlap``, ``tta_flip``, ``scales``, ``shift_stitch``,
        ``max_pixels``, ``threads``, ``compile``: see the class).
        """
        opened = open_source(source, int8=int8, mirror=mirror)
        return cls.from_opened(opened, backend=backend, **options)

    from_checkpoint = from_pretrained  # the older name; any source works with either

    @classmethod
    def from_opened(cls, opened, *, backend: str | None = None, **options) -> Segmenter:
        """A Segmenter for an :class:`fcnseg.weights.OpenedModel` (torch module or ONNX bytes)."""
        if opened.is_onnx:
            from fcnseg.inference import int8 as int8_models

            kind = "an int8 model" if opened.is_int8 else "an ONNX model"
            if backend not in (None, *runtimes.RUNTIMES):
                raise FcnsegError(
                    f"{opened.label} is {kind}; it runs on --backend onnxruntime or openvino, "
                    f"not --backend {backend} (pass the .pt it was made from for torch)"
                )
            default = int8_models.default_runtime() if opened.is_int8 else "onnxruntime"
            return cls(
                None,
                opened.meta,
                backend=backend or default,
                onnx_model=opened.onnx,
                int8_record=opened.int8_record,
                **options,
            )
        return cls(opened.module, opened.meta, backend=backend or "torch", **options)

    # ----------------------------------------------------------------------------- prediction

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 8
    ) -> np.ndarray | list[np.ndarray]:
        """HxW class ids (uint8, or int32 above 256 classes) at the input image's size; for a list
        (or an N-image batch) a list of them, one per image in order. Inputs: see the class."""
        items, many = image_list(images)
        masks = [mask for mask, _ in self._run_all(items, batch_size, probs=False)]
        return masks if many else masks[0]

    def predict_proba(
        self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 8
    ) -> np.ndarray | list[np.ndarray]:
        """CxHxW float32 class probabilities at the input image's size; a list for a list."""
        items, many = image_list(images)
        probs = [p for _, p in self._run_all(items, batch_size, probs=True)]
        return probs if many else probs[0]

    def _run_all(self, items: list, batch_size: int, probs: bool):
        """(mask, probabilities or None) per item, in order. Up to ``batch_size`` images are read at
        a time; those of equal size that need no tiling run as one batch, the rest one by one."""
        if batch_size < 1:
            raise FcnsegError(f"batch_size {batch_size} must be at least 1")
        for start in range(0, len(items), batch_size):
            rgbs = [load_image(item, self.max_pixels) for item in items[start : start + batch_size]]
            results: list = [None] * len(rgbs)
            groups: dict[tuple[int, int], list[int]] = {}
            for i, rgb in enumerate(rgbs):
                groups.setdefault(rgb.shape[:2], []).append(i)
            for (height, width), members in groups.items():
                if len(members) > 1 and not self._tile_for(height, width):
                    batch = torch.from_numpy(np.stack([rgbs[i] for i in members])).permute(0, 3, 1, 2)
                    out = self._tile_probs(batch).float()
                    for i, p in zip(members, out):
                        results[i] = (_mask_of(p, self.num_classes), p.numpy() if probs else None)
                    continue
                for i in members:
                    buffer = np.empty((self.num_classes, height, width), np.float32) if probs else None
                    results[i] = (self.segment(rgbs[i], probs_out=buffer)[0], buffer)
            yield from results

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
        if self.overlap_tile:
            overlap_tile(self._valid_probs, image_t, self.num_classes, sink, tile)
            return mask, rgb
        sliding_window(self._tile_probs, image_t, self.num_classes, tile or max(height, width), self.overlap, sink)
        return mask, rgb

    def _tile_for(self, height: int, width: int) -> int:
        if self.overlap_tile:
            return PAPER_TILE if self.tile is None else self.tile
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

    def _valid_probs(self, tile_uint8: torch.Tensor) -> torch.Tensor:
        """(1, 3, t + 184, t + 184) uint8 -> (1, C, t, t) probabilities of the unpadded U-Net."""
        x = normalize(tile_uint8, self.normalization)
        if self.device.type == "cuda":
            return _cuda_probs(self.model, x, self.device, forward=self.model.forward_valid)
        return fastpath.run_model(self.model, x, self.fast, forward=self.model.forward_valid).softmax(1)

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities of the backend for a normalised float batch."""
        if self.device.type == "cuda":
            return _cuda_probs(self.model, x, self.device)
        if self.backend == "torch":
            scores = fastpath.run_model(self.model, x, self.fast)
        else:
            scores = self._run(x)
        return scores.softmax(1)

    # ----------------------------------------------------------------------------- reporting

    def describe(self) -> str:
        """One line saying what runs and how (model, backend, fast path, tiling, TTA)."""
        trained = f"trained on {self.meta.trained_on}" if self.meta.trained_on else "training data not recorded"
        parts = [f"{self.meta.model_name} ({self.num_classes} classes, {trained}, {self.normalization} normalisation)"]
        if self.backend != "torch" and self.int8_record:
            calib = self.int8_record.get("calibration", {})
            parts.append(
                f"{self.backend} CPU int8 (static QDQ, per-channel; calibrated on {calib.get('images')} "
                f"images of {calib.get('data')} {calib.get('split')})"
            )
        elif self.backend == "onnxruntime":
            parts.append("onnxruntime CPU fp32")
        elif self.backend == "openvino":
            parts.append("OpenVINO CPU (default precision: bf16 where the CPU has it)")
        elif self.device.type == "cuda":
            dtype = str(autocast_dtype(self.device)).removeprefix("torch.")
            parts.append(f"torch {self.device} autocast {dtype} + channels_last + inference_mode")
        elif self.fast:
            parts.append(
                f"torch fast path: bf16 weights (fp32 score head) + channels_last + inference_mode "
                f"({fastpath.fast_path_reason()})"
            )
        else:
            reason = "disabled" if fastpath.fast_path_supported() else fastpath.fast_path_reason()
            parts.append(f"torch fp32 + channels_last + inference_mode (fast path off: {reason})")
        winograd_layers = fastpath.winograd_layers(self.model) if self.backend == "torch" else {}
        if winograd_layers:
            algorithms = ", ".join(f"{name} x{count}" for name, count in winograd_layers.items())
            parts[-1] += (
                f" + Winograd for the convs of >= {fastpath.winograd.MIN_CHANNELS} channels ({algorithms}; "
                "fewer multiplications than the direct fp32 convolution)"
            )
        if self.backend == "torch" and fastpath.padcache.installed(self.model):
            parts[-1] += " + pad-constant cache"
        if self.compiled:
            parts[-1] += " + torch.compile (freezing)"
        if self.overlap_tile:
            size = output_tile(PAPER_TILE if self.tile is None else self.tile)
            parts.append(f"overlap-tile {size}px out / {size + 184}px in, mirrored borders")
        elif self.tile is None:
            parts.append(f"whole image, tiles of {AUTO_TILE} above {AUTO_TILE_PIXELS / 1e6:.2f} MP")
        elif self.tile == 0:
            parts.append("whole image")
        else:
            parts.append(f"tiles {self.tile}px, overlap {self.overlap:.2f}")
        if self.tta_flip or self.scales != (1.0,):
            parts.append(
                f"TTA: flip={'on' if self.tta_flip else 'off'}, scales=" + ",".join(f"{s:g}" for s in self.scales)
            )
        if self.shift_stitch and self.shift_stitch > 1:
            parts.append(f"shift-and-stitch x{self.shift_stitch}")
        return " | ".join(parts)


def open_source(source: str | os.PathLike, *, int8: str | os.PathLike | None = None, mirror: str | None = None):
    """fcnseg.weights.open_model(source), or with ``int8`` that int8 model, after checking it was
    quantized from ``source``'s architecture and weights (the one place such a pair is checked)."""
    from fcnseg.inference import int8 as int8_models
    from fcnseg.weights import open_model

    opened = open_model(source, mirror=mirror)
    if int8 is None:
        return opened
    paired = open_model(int8)
    if not paired.is_int8:
        raise FcnsegError(
            f"--int8 {int8} is not an int8 model from `fcnseg quantize`; run `fcnseg quantize --weights {source}` first"
        )
    if paired.path != opened.path:
        int8_models.check_source(
            paired.int8_record, int8, opened.meta, opened.require_module("--int8 (checking the pair)"), source
        )
    return paired


def _inference_device(device: str | torch.device | None, backend: str) -> torch.device:
    """The checked device; onnxruntime runs here on the CPU (an explicit cuda request is an error)."""
    if backend in runtimes.RUNTIMES:
        if device not in (None, "auto") and resolve_device(device).type != "cpu":
            raise FcnsegError(
                f"--device {device}: the {backend} backend runs on the CPU; use --backend torch "
                "with a .pt or .safetensors checkpoint for the GPU"
            )
        return torch.device("cpu")
    return resolve_device(device)


def _cuda_probs(model: nn.Module, x: torch.Tensor, device: torch.device, forward=None) -> torch.Tensor:
    """Probabilities on the GPU: autocast (bf16, else fp16) + channels_last; returned on the CPU.
    ``forward``: the model's method to call (default: the model itself)."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=autocast_dtype(device)):
        scores = (forward or model)(x)
    return scores.float().softmax(1).cpu()


def _mask_of(probs: torch.Tensor, num_classes: int) -> np.ndarray:
    """C x H x W probabilities -> H x W class ids (uint8, or int32 above 256 classes)."""
    return probs.argmax(0).numpy().astype(np.uint8 if num_classes <= 256 else np.int32)
