"""Turning label maps into pictures: colourise with a palette, blend over the image, save index PNGs."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

IGNORE_COLOR = (255, 255, 255)


def palette_array(palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """A (256, 3) uint8 lookup table: class i -> palette[i], ignore_index -> white, rest black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    if 0 <= ignore_index < 256 and ignore_index >= len(palette):
        lut[ignore_index] = IGNORE_COLOR
    return lut


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """HxW integer labels -> HxWx3 uint8 RGB."""
    mask = np.asarray(mask)
    return palette_array(palette, ignore_index)[np.clip(mask, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised mask over an HxWx3 uint8 image."""
    color = colorize(mask, palette).astype(np.float32)
    out = (1 - alpha) * np.asarray(image, dtype=np.float32)[..., :3] + alpha * color
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_index_png(mask: np.ndarray, palette: Sequence[Sequence[int]], path: str | os.PathLike) -> None:
    """Save labels as a palette ('P' mode) PNG, the PASCAL VOC format: pixel values are class ids."""
    mask = np.asarray(mask)
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError("index PNGs hold labels 0..255")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(palette_array(palette).reshape(-1).tolist())
    img.save(path)
