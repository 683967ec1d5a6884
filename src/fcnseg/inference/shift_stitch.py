"""Shift-and-stitch (Long et al. 2015, Section 3.2): dense predictions from a coarse-stride net.

A net with output stride f predicts one value per f x f block. Shifting the input up/left by
(dy, dx) for every dy, dx in 0..f-1 and interlacing the f^2 coarse outputs gives one prediction per
input pixel: output pixel (i*f + dy, j*f + dx) is coarse cell (i, j) of the input shifted by (dy, dx).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

CoarseFn = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, f*h, f*w) -> (N, C, >=h, >=w)


def shift_and_stitch(coarse_fn: CoarseFn, x: torch.Tensor, factor: int) -> torch.Tensor:
    """Dense (N, C, H, W) output of ``coarse_fn`` (output stride ``factor``) on ``x`` (N, 3, H, W).

    The input is zero-padded at the bottom and right so every shift sees a multiple of ``factor``.
    """
    f = int(factor)
    if f < 1:
        raise ValueError("shift-and-stitch factor must be >= 1")
    n, _, height, width = x.shape
    hc, wc = math.ceil(height / f), math.ceil(width / f)
    padded = F.pad(x, (0, wc * f + f - 1 - width, 0, hc * f + f - 1 - height))
    out = None
    for dy in range(f):
        for dx in range(f):
            coarse = coarse_fn(padded[:, :, dy : dy + hc * f, dx : dx + wc * f])
            if coarse.shape[-2] < hc or coarse.shape[-1] < wc:
                raise ValueError(
                    f"coarse output {tuple(coarse.shape[-2:])} is smaller than input/"
                    f"{f} = {(hc, wc)}; is the factor the net's output stride?"
                )
            if out is None:
                out = coarse.new_zeros(n, coarse.shape[1], hc * f, wc * f)
            out[:, :, dy::f, dx::f] = coarse[:, :, :hc, :wc]
    return out[:, :, :height, :width]


def subsampled(dense_fn: CoarseFn, factor: int) -> CoarseFn:
    """Turn a full-resolution net into a stride-``factor`` one by keeping every factor-th output pixel.

    Used to apply shift-and-stitch to FCNs, whose forward already upsamples to the input size.
    """
    return lambda x: dense_fn(x)[:, :, ::factor, ::factor]
