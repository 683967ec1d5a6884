"""Sliding-window inference with blended overlapping tiles, and test-time augmentation.

Memory is bounded by the tile size, not the image: tiles are processed one row of tiles at a time,
their class probabilities are blended into a buffer of ``C x tile x W`` with a weight window that
fades towards the tile borders, and every image row that no later tile can touch is handed to a
*sink* (argmax into a mask, copy into a probability array, ...) and dropped from the buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ProbsFn = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, h, w) -> (1, C, h, w) probabilities
RowSink = Callable[[int, torch.Tensor], None]  # (first row, C x rows x W probabilities)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with step ``stride`` (last one flush)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def blend_weights(height: int, width: int, ramp: int) -> torch.Tensor:
    """A (height, width) weight window: 1 inside, ramping linearly down over ``ramp`` border pixels.

    Never zero, so every pixel has positive total weight; at the image border the normalisation by
    the summed weights makes the ramp harmless.
    """

    def ramp_1d(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        edge = torch.minimum(i + 1, n - i) / (ramp + 1)
        return edge.clamp(max=1.0)

    return ramp_1d(height)[:, None] * ramp_1d(width)[None, :]


def sliding_window(
    probs_fn: ProbsFn, image: torch.Tensor, num_classes: int, tile: int, overlap: float, sink: RowSink
) -> None:
    """Run ``probs_fn`` over overlapping tiles of ``image`` (3 x H x W) and stream blended rows to ``sink``.

    ``sink(y0, probs)`` receives consecutive bands (probs: C x rows x W float32) from top to bottom;
    the band is a view into the working buffer, valid only during the call (copy what you keep).
    """
    if not 0 <= overlap < 1:
        raise ValueError("overlap must be in [0, 1)")
    _, height, width = image.shape
    th, tw = min(tile, height), min(tile, width)
    stride = max(1, round(tile * (1 - overlap)))
    ys, xs = tile_starts(height, th, stride), tile_starts(width, tw, stride)
    if len(ys) == 1 and len(xs) == 1:
        sink(0, probs_fn(image[None])[0].float())
        return
    weight = blend_weights(th, tw, ramp=max(0, tile - stride))
    acc = torch.zeros(num_classes, th, width)
    wsum = torch.zeros(th, width)
    for i, y in enumerate(ys):  # acc holds image rows y .. y + th
        for x in xs:
            probs = probs_fn(image[None, :, y : y + th, x : x + tw])[0].float()
            acc[:, :, x : x + tw].addcmul_(probs, weight)
            wsum[:, x : x + tw] += weight
        done = (ys[i + 1] if i + 1 < len(ys) else height) - y  # rows no later tile touches
        sink(y, acc[:, :done].div_(wsum[:done]))  # finished rows: normalise in place, no copy
        keep = th - done
        acc[:, :keep] = acc[:, done:].clone()
        wsum[:keep] = wsum[done:].clone()
        acc[:, keep:] = 0
        wsum[keep:] = 0


def tta(probs_fn: ProbsFn, flip: bool = False, scales: Sequence[float] = (1.0,)) -> ProbsFn:
    """Wrap ``probs_fn`` to average probabilities over scales and (optionally) a horizontal flip."""
    scales = tuple(float(s) for s in scales) or (1.0,)
    if not flip and scales == (1.0,):
        return probs_fn

    def averaged(x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        total = None
        for scale in scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            xs = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            views = [(xs, False)] + ([(xs.flip(-1), True)] if flip else [])
            for view, flipped in views:
                probs = probs_fn(view)
                if flipped:
                    probs = probs.flip(-1)
                if probs.shape[-2:] != (height, width):
                    probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
                total = probs if total is None else total + probs
        return total / (len(scales) * (2 if flip else 1))

    return averaged
