"""Input normalisation. The mode travels inside every checkpoint as one string:

* ``imagenet``: RGB in [0, 1], minus the ImageNet mean, divided by its std (torchvision weights).
* ``caffe``: BGR in [0, 255] minus the per-channel mean of the original VGG16/FCN Caffe models.
* ``caffe:B,G,R``: the same with another BGR mean, e.g. ``caffe:116.190,97.203,92.318`` for the
  NYUDv2 FCN (each Caffe model subtracts the mean of the data it was trained on).

Images enter as uint8 tensors (..., 3, H, W) in RGB order; the result is float. Code that needs
to know the mode's kind or mean asks :func:`parse_mode`, never compares strings.
"""

from __future__ import annotations

import torch

from fcnseg.errors import FcnsegError

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

MODES = ("imagenet", "caffe")  # the named modes; "caffe:B,G,R" adds a mean to "caffe"


def parse_mode(mode: str) -> tuple[str, tuple[float, float, float]]:
    """(kind, mean): ("imagenet", ImageNet RGB mean in [0, 1]) or ("caffe", BGR mean in [0, 255])."""
    if mode == "imagenet":
        return "imagenet", IMAGENET_MEAN_RGB
    if mode == "caffe":
        return "caffe", CAFFE_MEAN_BGR
    if isinstance(mode, str) and mode.startswith("caffe:"):
        try:
            mean = tuple(float(v) for v in mode[len("caffe:") :].split(","))
        except ValueError:
            mean = ()
        if len(mean) == 3 and all(0 <= v <= 255 for v in mean):
            return "caffe", mean
    raise FcnsegError(
        f"unknown normalisation {mode!r}; choose one of {', '.join(MODES)} or "
        "caffe:B,G,R (a BGR mean in 0..255, e.g. caffe:116.190,97.203,92.318)"
    )


def check_mode(mode: str) -> str:
    parse_mode(mode)
    return mode


def normalize(images: torch.Tensor, mode: str = "imagenet", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> normalised float tensor for the network."""
    kind, mean = parse_mode(mode)
    x = images.to(dtype)
    shape = (3, 1, 1)
    if kind == "imagenet":
        mean = torch.tensor(mean, dtype=dtype, device=x.device).view(shape) * 255
        std = torch.tensor(IMAGENET_STD_RGB, dtype=dtype, device=x.device).view(shape) * 255
        return (x - mean) / std
    bgr = x.flip(-3)
    return bgr - torch.tensor(mean, dtype=dtype, device=x.device).view(shape)


def mean_pixel(mode: str = "imagenet") -> tuple[int, int, int]:
    """The RGB uint8 colour that normalises to (about) zero: the right value to pad images with."""
    kind, mean = parse_mode(mode)
    if kind == "imagenet":
        return tuple(round(c * 255) for c in mean)
    return tuple(round(c) for c in reversed(mean))
