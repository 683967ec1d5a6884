"""Input normalisation. The mode travels inside every checkpoint ("imagenet" or "caffe").

* ``imagenet``: RGB in [0, 1], minus the ImageNet mean, divided by its std (torchvision weights).
* ``caffe``: BGR in [0, 255] minus the per-channel mean of the original VGG16/FCN Caffe models.

Images enter as uint8 tensors (..., 3, H, W) in RGB order; the result is float.
"""

from __future__ import annotations

import torch

from fcnseg.errors import FcnsegError

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

MODES = ("imagenet", "caffe")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise FcnsegError(f"unknown normalisation {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def normalize(images: torch.Tensor, mode: str = "imagenet", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> normalised float tensor for the network."""
    check_mode(mode)
    x = images.to(dtype)
    shape = (3, 1, 1)
    if mode == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN_RGB, dtype=dtype, device=x.device).view(shape) * 255
        std = torch.tensor(IMAGENET_STD_RGB, dtype=dtype, device=x.device).view(shape) * 255
        return (x - mean) / std
    bgr = x.flip(-3)
    return bgr - torch.tensor(CAFFE_MEAN_BGR, dtype=dtype, device=x.device).view(shape)


def mean_pixel(mode: str = "imagenet") -> tuple[int, int, int]:
    """The RGB uint8 colour that normalises to (about) zero: the right value to pad images with."""
    check_mode(mode)
    if mode == "imagenet":
        return tuple(round(c * 255) for c in IMAGENET_MEAN_RGB)
    return tuple(round(c) for c in reversed(CAFFE_MEAN_BGR))
