"""Input normalisation. The mode travels inside every checkpoint as one string:

* ``imagenet``: RGB in [0, 1], minus the ImageNet mean, divided by its std (torchvision weights).
* ``caffe``: BGR in [0, 255] minus the per-channel mean of the original VGG16/FCN Caffe models.
* ``caffe:B,G,R``: the same with another BGR mean, e.g. ``caffe:116.190,97.203,92.318`` for the
  NYUDv2 FCN (each Caffe model subtracts the mean of the data it was trained on).
* ``raw:A,B,C``: [0, 255] minus a per-channel mean, channels kept in their order: the NYUDv2 HHA
  models (``raw:132.431,94.076,118.477``, nyud_layers.py's mean_hha; HHA is not a colour image).
* ``MODE+MODE``: one mode per group of three channels, e.g. the RGB-HHA late-fusion model's
  6-channel input ``caffe:116.190,97.203,92.318+raw:132.431,94.076,118.477``.

Images enter as uint8 tensors (..., 3, H, W) in RGB order; the result is float. Code that needs
to know the mode's kind or mean asks :func:`parse_mode`, never compares strings.
"""

from __future__ import annotations

import torch

from fcnseg.errors import FcnsegError

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

MODES = ("imagenet", "caffe")  # the named modes; "caffe:B,G,R" adds a mean to "caffe", "raw:A,B,C" keeps order


def parse_mode(mode: str) -> tuple[str, tuple[float, float, float]]:
    """(kind, mean) of one 3-channel mode: ("imagenet", ImageNet RGB mean in [0, 1]), ("caffe", BGR
    mean in [0, 255]) or ("raw", per-channel mean in [0, 255], channel order kept)."""
    if mode == "imagenet":
        return "imagenet", IMAGENET_MEAN_RGB
    if mode == "caffe":
        return "caffe", CAFFE_MEAN_BGR
    kind, _, values = mode.partition(":") if isinstance(mode, str) else ("", "", "")
    if kind in ("caffe", "raw") and values:
        try:
            mean = tuple(float(v) for v in values.split(","))
        except ValueError:
            mean = ()
        if len(mean) == 3 and all(0 <= v <= 255 for v in mean):
            return kind, mean
    raise FcnsegError(
        f"unknown normalisation {mode!r}; choose one of {', '.join(MODES)}, caffe:B,G,R (a BGR mean "
        "in 0..255, e.g. caffe:116.190,97.203,92.318), raw:A,B,C, or MODE+MODE for 6-channel input"
    )


def parse_modes(mode: str) -> list[tuple[str, tuple[float, float, float]]]:
    """Every 3-channel group's (kind, mean): one for ordinary modes, two for ``MODE+MODE``."""
    return [parse_mode(part) for part in str(mode).split("+")]


def input_channels(mode: str) -> int:
    """How many input channels a normalisation mode describes (3 per group)."""
    return 3 * len(parse_modes(mode))


def for_channels(mode: str, channels: int) -> str:
    """``mode`` for ``channels`` input channels: itself, or a single mode repeated per group of 3
    ("imagenet" for 6 channels -> "imagenet+imagenet")."""
    groups = parse_modes(mode)
    if 3 * len(groups) == channels:
        return mode
    if len(groups) == 1 and channels % 3 == 0:
        return "+".join([mode] * (channels // 3))
    raise FcnsegError(f"normalisation {mode!r} is for {3 * len(groups)}-channel input, not {channels}")


def check_mode(mode: str) -> str:
    parse_modes(mode)
    return mode


def _normalize_group(x: torch.Tensor, kind: str, mean: tuple[float, float, float], dtype: torch.dtype):
    shape = (3, 1, 1)
    if kind == "imagenet":
        mean_t = torch.tensor(mean, dtype=dtype, device=x.device).view(shape) * 255
        std = torch.tensor(IMAGENET_STD_RGB, dtype=dtype, device=x.device).view(shape) * 255
        return (x - mean_t) / std
    if kind == "caffe":
        x = x.flip(-3)  # RGB -> BGR
    return x - torch.tensor(mean, dtype=dtype, device=x.device).view(shape)


def normalize(images: torch.Tensor, mode: str = "imagenet", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., 3 x groups, H, W) -> normalised float tensor for the network (RGB for the
    imagenet and caffe modes; a ``MODE+MODE`` mode normalises each group of 3 channels by its own)."""
    groups = parse_modes(mode)
    x = images.to(dtype)
    if x.shape[-3] != 3 * len(groups):
        raise FcnsegError(
            f"normalisation {mode!r} is for {3 * len(groups)}-channel input, the images have "
            f"{x.shape[-3]} channels; give the model the data modality it was trained on"
        )
    if len(groups) == 1:
        return _normalize_group(x, *groups[0], dtype)
    parts = x.split(3, dim=-3)
    return torch.cat([_normalize_group(p, kind, mean, dtype) for p, (kind, mean) in zip(parts, groups)], dim=-3)


def mean_pixel(mode: str = "imagenet") -> tuple[int, ...]:
    """The uint8 pixel that normalises to (about) zero: the right value to pad images with (RGB for
    the imagenet and caffe modes; 3 values per channel group)."""
    pixel: list[int] = []
    for kind, mean in parse_modes(mode):
        if kind == "imagenet":
            pixel += [round(c * 255) for c in mean]
        else:
            pixel += [round(c) for c in (reversed(mean) if kind == "caffe" else mean)]
    return tuple(pixel)
