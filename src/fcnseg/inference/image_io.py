"""Inputs for prediction: any file Pillow opens, PIL images, numpy arrays and torch tensors ->
HxWx3 uint8 RGB; :func:`image_list` splits a list or a batch into single images.

Files and PIL images go through ``fcnseg.images.read_rgb``, the one reader the datasets, training
and the server use too (EXIF orientation, 16-bit, palette, alpha, CMYK, bomb guard, one-line
errors naming the file); arrays and tensors follow the same depth rules (``fcnseg.images.to_rgb``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from fcnseg.errors import FcnsegError
from fcnseg.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, pil_to_rgb, read_rgb, to_rgb, to_uint8, too_big_message  # noqa: F401

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, "torch.Tensor"]  # noqa: F821 (torch: lazily)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into HxWx3 uint8 RGB (``fcnseg.images.read_rgb``)."""
    return read_rgb(path, max_pixels)


def _too_big(path: Path, width: int, height: int, max_pixels: int) -> str:
    return too_big_message(path, width, height, max_pixels)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(value, torch.Tensor)


def tensor_to_hwc(tensor: torch.Tensor) -> np.ndarray:  # noqa: F821
    """A CHW (or 1xCxHxW, HW, HWC) tensor on any device -> an HxWxC numpy array (values unchanged)."""
    array = tensor.detach().cpu()
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.is_floating_point():
        array = array.float()  # bf16/fp16 -> fp32: numpy has no bf16
    array = array.numpy()
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        return array.transpose(1, 2, 0)  # CHW, the torch layout
    if array.ndim in (2, 3):
        return array  # HW, or HWC when the first axis cannot be channels
    raise FcnsegError(
        f"image tensor has shape {tuple(tensor.shape)}; pass CxHxW, 1xCxHxW or NxCxHxW (a list or a batch)"
    )


def load_image(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path, PIL image, numpy array (HxW, HxWxC) or torch tensor (CxHxW) -> HxWx3 uint8 RGB.

    Arrays follow ``fcnseg.images.to_uint8``: uint16 keeps its high byte, other integers are 0..255,
    floats in [0, 1] are scaled to 0..255."""
    if isinstance(image, (str, os.PathLike, Image.Image)):
        return read_rgb(image, max_pixels)
    if _is_tensor(image):
        image = tensor_to_hwc(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3, 4):
            image = image.transpose(1, 2, 0)  # a CHW array: the layout is unambiguous
        if image.ndim >= 2 and image.shape[0] * image.shape[1] > max_pixels:
            raise FcnsegError(_too_big(Path("<array>"), image.shape[1], image.shape[0], max_pixels))
        return to_rgb(image)
    raise FcnsegError(
        f"cannot predict on a {type(image).__name__}; pass a file path, PIL image, numpy array, "
        "torch tensor, or a list of those"
    )


def image_list(images: Any) -> tuple[list, bool]:
    """(single images, was it several?) for a single image, a list/tuple of images, an NxCxHxW
    tensor or an NxHxWxC numpy array (one image per entry of the first axis)."""
    if isinstance(images, (list, tuple)):
        return list(images), True
    if _is_tensor(images) and images.ndim == 4:
        return list(images.unbind(0)), True
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), True
    return [images], False


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
