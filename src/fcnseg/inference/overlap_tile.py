"""Overlap-tile prediction for the unpadded U-Net (Ronneberger et al. 2015, Fig. 2).

The unpadded network sees 92 pixels of context on every side of what it labels: a 388x388 output
tile reads a 572x572 input tile. An image of any size is mirror-extended by 92 pixels (plus a few at
the bottom and right, so whole tiles cover it), and output tiles are laid on a grid whose offsets are
multiples of 16, the network's pooling period: every tile then computes exactly the scores the whole
mirrored image would give there, so the tiles need no blending (neighbours overlap by 4 identical
pixels) and the result equals one forward over the mirrored image, at bounded memory. Rows of
finished tiles are handed to a sink, as in :func:`fcnseg.inference.window.sliding_window`.
"""

from __future__ import annotations

import torch

from fcnseg.inference.window import ProbsFn, RowSink
from fcnseg.models.layers import mirror_pad
from fcnseg.models.unet import VALID_CONTEXT, VALID_PHASE, VALID_STEP, valid_output_size

PAPER_TILE = 388  # output pixels per tile side (572 input pixels)


def output_tile(tile: int) -> int:
    """The largest output tile the network produces that is at most ``tile`` (at least 4 + 16)."""
    return max(VALID_PHASE + VALID_STEP, VALID_PHASE + VALID_STEP * ((tile - VALID_PHASE) // VALID_STEP))


def tile_offsets(length: int, tile: int) -> tuple[list[int], int]:
    """Output offsets of the tiles covering ``length`` pixels (multiples of 16, ``tile - 4`` apart),
    and the length they cover (at least ``length``, a valid output size)."""
    tile = min(output_tile(tile), valid_output_size(length))
    stride = tile - VALID_PHASE
    count = max(1, -(-(length - VALID_PHASE) // stride))
    return [i * stride for i in range(count)], stride * (count - 1) + tile


def overlap_tile(
    probs_fn: ProbsFn, image: torch.Tensor, num_classes: int, sink: RowSink, tile: int = PAPER_TILE
) -> None:
    """Label ``image`` (3 x H x W, any dtype) tile by tile and stream its rows to ``sink``.

    ``probs_fn`` maps a (1, 3, t + 184, t + 184) input tile to the (1, C, t, t) probabilities of the
    unpadded network (``t``: the output tile, ``tile`` rounded down to 4 + 16k, or smaller for small
    images). ``sink(y0, probs)`` receives consecutive C x rows x W bands, top to bottom.
    """
    _, height, width = image.shape
    ys, covered_h = tile_offsets(height, tile)
    xs, covered_w = tile_offsets(width, tile)
    th = covered_h - ys[-1]  # the output tile (all tiles have this size)
    tw = covered_w - xs[-1]
    c = VALID_CONTEXT
    padded = mirror_pad(image, c, c + covered_h - height, c, c + covered_w - width)
    band = torch.empty(num_classes, th, covered_w)
    for i, y in enumerate(ys):
        for x in xs:
            window = padded[None, :, y : y + th + 2 * c, x : x + tw + 2 * c]
            band[:, :, x : x + tw] = probs_fn(window)[0].float()
        done = min(ys[i + 1] if i + 1 < len(ys) else height, height) - y
        sink(y, band[:, :done, :width])
