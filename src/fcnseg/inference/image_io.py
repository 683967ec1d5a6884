"""Reading images for prediction: any file Pillow opens, PIL images, numpy arrays and torch tensors
-> HxWx3 uint8 RGB; :func:`image_list` splits a list or a batch into single images.

Handles EXIF orientation (phone photos), grayscale, palette, RGBA (alpha dropped), 16-bit and float
inputs. Files whose header announces more than ``max_pixels`` pixels are refused before decoding
(decompression bombs); empty, truncated and non-image files raise FcnsegError naming the file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from fcnseg.errors import FcnsegError
from fcnseg.images import DEFAULT_MAX_PIXELS, open_image, too_big_message

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, "torch.Tensor"]  # noqa: F821 (torch: lazily)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float array to uint8: 16-bit by /257, floats in [0, 1] by *255."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 else 255
        return np.clip(array.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    array = np.nan_to_num(array.astype(np.float32))
    scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
    return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)


def to_rgb(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 array (any numeric dtype) -> HxWx3 uint8 (alpha dropped)."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise FcnsegError(f"image array has shape {array.shape}; pass HxW, HxWx3 or HxWx4")
    array = to_uint8(array[..., :3])
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()  # PIL hands out read-only views


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image in any mode -> HxWx3 uint8 RGB, after applying its EXIF orientation."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb(np.asarray(img))  # 16/32-bit grayscale: scale, don't clip
    if img.mode != "RGB":
        img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
    return to_rgb(np.asarray(img))


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into HxWx3 uint8 RGB; every failure is one FcnsegError naming the file
    (the guards are ``fcnseg.images.open_image``, shared with the dataset readers)."""
    with open_image(path, "image", max_pixels) as img:
        return pil_to_rgb(img)


def _too_big(path: Path, width: int, height: int, max_pixels: int) -> str:
    return too_big_message(path, width, height, max_pixels)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(value, torch.Tensor)


def tensor_to_hwc(tensor: "torch.Tensor") -> np.ndarray:  # noqa: F821
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
    raise FcnsegError(f"image tensor has shape {tuple(tensor.shape)}; pass CxHxW, 1xCxHxW or NxCxHxW "
                      "(a list or a batch)")


def load_image(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path, PIL image, numpy array (HxW, HxWxC) or torch tensor (CxHxW) -> HxWx3 uint8 RGB.

    Integer values are taken as 0..255 (0..65535 above 255); floats in [0, 1] are scaled to 0..255."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels)
    if isinstance(image, Image.Image):
        if image.width * image.height > max_pixels:
            raise FcnsegError(_too_big(Path("<PIL image>"), image.width, image.height, max_pixels))
        return pil_to_rgb(image)
    if _is_tensor(image):
        image = tensor_to_hwc(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3, 4):
            image = image.transpose(1, 2, 0)  # a CHW array: the layout is unambiguous
        if image.ndim >= 2 and image.shape[0] * image.shape[1] > max_pixels:
            raise FcnsegError(_too_big(Path("<array>"), image.shape[1], image.shape[0], max_pixels))
        return to_rgb(image)
    raise FcnsegError(f"cannot predict on a {type(image).__name__}; pass a file path, PIL image, numpy array, "
                      "torch tensor, or a list of those")


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
