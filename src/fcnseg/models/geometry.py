"""Coordinate mapping: where each cell of a feature map sits in input pixels, and the crops it implies.

Every convolution, pooling and transposed convolution maps the cells of its input to the cells of its
output by an affine rule that depends only on its kernel, stride, padding and dilation. Composing the
rules along a path gives, for any feature map, ``pixel = stride * cell + start``: the input pixel at
the centre of the cell's receptive field. Two maps with the same stride are aligned by cropping the
one that starts earlier by ``(start_later - start_earlier) / stride`` cells. This is how the FCN
reference derives its crop offsets (Caffe's ``coord_map``); here they are computed, never typed in.

Example (the reference FCN-32s): conv1_1 pads 100, so its cell 0 is centred on pixel -99; each 2x2
pool moves the start by half its input stride; fc6 (7x7) by 3 cells of stride 32; the 64x64 stride-32
upsampler by -31.5 pixels. The output cell 0 sits at pixel -19, so the output is cropped by 19.
The reference FCN-AlexNet (CaffeNet trunk): conv1 (11x11/4, pad 100) starts at -95, its three 3x3/2
pools add 4, 8 and 16 (pool5 at -67), the 6x6 fc6 adds 2.5 cells of 32 (+80), and its 63x63 stride-32
upsampler -31: cell 0 at pixel -18, the crop of its val.prototxt. LRN and grouping move no cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from torch import nn


@dataclass(frozen=True)
class CoordMap:
    """Cell ``i`` of a feature map is centred on input pixel ``stride * i + start``."""

    stride: Fraction = Fraction(1)
    start: Fraction = Fraction(0)

    def then(self, layer: nn.Module) -> CoordMap:
        """The map of ``layer``'s output, given that its input has this map."""
        kernel, stride, padding, transposed = layer_geometry(layer)
        centre = Fraction(kernel - 1, 2)
        if transposed:
            # output cell j is fed by input position (j + padding - centre) / stride
            return CoordMap(self.stride / stride, self.start + self.stride * (padding - centre) / stride)
        # output cell j is centred on input cell stride * j - padding + centre
        return CoordMap(self.stride * stride, self.start + self.stride * (centre - padding))


def _square(value, what: str, layer: nn.Module) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"{what} of {layer} is not square; coordinate mapping assumes square layers")
        value = value[0]
    if not isinstance(value, int):
        raise ValueError(f"{what} of {layer} must be an integer, got {value!r}")
    return value


def layer_geometry(layer: nn.Module) -> tuple[int, int, int, bool]:
    """(effective kernel, stride, padding, transposed) of a spatial layer.

    Works for nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d/AvgPool2d and any module exposing
    ``kernel_size``, ``stride``, ``padding`` (and optionally ``dilation``, ``transposed``) attributes,
    such as fcnseg's BilinearUpsample. Layers without ``kernel_size`` (ReLU, Dropout, ...) are the
    identity: (1, 1, 0, False).
    """
    if not hasattr(layer, "kernel_size"):
        return 1, 1, 0, False
    kernel = _square(layer.kernel_size, "kernel_size", layer)
    stride = _square(layer.stride if layer.stride is not None else kernel, "stride", layer)
    padding = _square(layer.padding, "padding", layer)
    dilation = _square(getattr(layer, "dilation", 1), "dilation", layer)
    return dilation * (kernel - 1) + 1, stride, padding, bool(getattr(layer, "transposed", False))


def compose(layers: Iterable[nn.Module], start: CoordMap | None = None) -> CoordMap:
    """The coordinate map after applying ``layers`` in order to a map ``start`` (default: the image)."""
    cmap = start or CoordMap()
    for layer in layers:
        cmap = cmap.then(layer)
    return cmap


def crop_offset(big: CoordMap, small: CoordMap) -> Fraction:
    """Cells to crop from the start of ``big`` so that its cell 0 lands on ``small``'s cell 0.

    Both maps must have the same stride. A negative result means ``small`` starts earlier (crop it
    instead, by the opposite amount). The result may be fractional when a layer with an even kernel
    (AlexNet's 6x6 fc6) puts cell centres between pixels; callers floor it.
    """
    if big.stride != small.stride:
        raise ValueError(f"cannot align maps of stride {big.stride} and {small.stride}")
    return (small.start - big.start) / big.stride


def integer_offset(offset: Fraction) -> int:
    """``offset`` rounded down to whole cells (exact for VGG; a half-cell shift for AlexNet)."""
    return math.floor(offset)
