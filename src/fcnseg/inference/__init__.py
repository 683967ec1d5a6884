"""Prediction, export and the CPU fast path.

* :class:`Segmenter` - load a checkpoint (.pt, .safetensors or .onnx) and predict masks/probabilities.
* :func:`sliding_window`, :func:`tta` - tiled inference with blended overlaps; flip/multi-scale TTA.
* :func:`shift_and_stitch` - dense output from a coarse-stride net (paper Section 3.2).
* :func:`export_onnx`, :func:`export_safetensors`, :func:`load_safetensors` - export formats.
* :func:`load_image` - any image input -> HxWx3 uint8 RGB (EXIF, grayscale, RGBA, 16-bit, bomb guard).
"""

from fcnseg.inference.export import export_onnx, export_safetensors, load_safetensors
from fcnseg.inference.fastpath import fast_path_supported
from fcnseg.inference.image_io import load_image
from fcnseg.inference.segmenter import Segmenter
from fcnseg.inference.shift_stitch import shift_and_stitch, subsampled
from fcnseg.inference.window import sliding_window, tta

__all__ = [
    "Segmenter",
    "export_onnx",
    "export_safetensors",
    "fast_path_supported",
    "load_image",
    "load_safetensors",
    "shift_and_stitch",
    "sliding_window",
    "subsampled",
    "tta",
]
