"""Paired image/mask transforms on tensors, and a collate function that pads batches.

Images are uint8 (3, H, W) RGB, masks int64 (H, W), or (K, H, W) for K labellings of the same pixels
(``data.base.WithTargets``), transformed alike. Randomness comes from torch's global RNG, which
the DataLoader seeds per worker (see fcnseg.data.loader.build_loader); with workers=0 seed it with
``torch.manual_seed``. Normalisation is not done here: the training loop normalises whole batches
with fcnseg.data.normalize.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fcnseg.data.base import IGNORE_INDEX

DEFAULT_PAD = (124, 116, 104)  # the ImageNet mean colour, which normalises to about zero


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to ``size`` (H, W): the image bilinearly (antialiased when shrinking), the mask by
    nearest neighbour on pixel centres, so labels are never blended."""
    h, w = size
    if (h, w) == tuple(image.shape[-2:]):
        return image, mask
    x = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    image = x[0].round_().clamp_(0, 255).to(torch.uint8)
    mh, mw = mask.shape[-2:]
    rows = ((torch.arange(h) + 0.5) * mh / h).long().clamp_(max=mh - 1)
    cols = ((torch.arange(w) + 0.5) * mw / w).long().clamp_(max=mw - 1)
    return image, mask[..., rows[:, None], cols[None, :]]


def pad_pair(
    image: torch.Tensor,
    mask: torch.Tensor,
    height: int,
    width: int,
    pad_value: Sequence[int] = DEFAULT_PAD,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad at the bottom and right to at least (height, width): image with ``pad_value``, mask with
    ``ignore_index``, so padding never counts in the loss or the metrics."""
    h, w = image.shape[-2:]
    if h >= height and w >= width:
        return image, mask
    H, W = max(h, height), max(w, width)
    out_image = torch.tensor(pad_value, dtype=image.dtype).view(-1, 1, 1).repeat(1, H, W)
    out_image[:, :h, :w] = image
    out_mask = torch.full((*mask.shape[:-2], H, W), ignore_index, dtype=mask.dtype)
    out_mask[..., :h, :w] = mask
    return out_image, out_mask


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def color_jitter(image: torch.Tensor, strength: float) -> torch.Tensor:
    """Random brightness, contrast and saturation, each a factor in [1 - strength, 1 + strength]."""
    x = image.float()
    b, c, s = (_uniform(1 - strength, 1 + strength) for _ in range(3))
    x = x * b
    mean = _gray(x).mean()
    x = (x - mean) * c + mean
    gray = _gray(x)
    x = gray + (x - gray) * s
    return x.round_().clamp_(0, 255).to(torch.uint8)


class TrainTransform:
    """Training augmentation, in this order: random scale, random crop (padding first when the
    image is smaller than the crop), horizontal flip, photometric jitter (cropping first keeps the
    per-pixel work small).

    crop_size:   int or (H, W); None keeps whole images (the paper's whole-image training).
    scale_range: (low, high) factor for a random rescale; None for no rescale.
    hflip:       flip left-right with probability 1/2.
    jitter:      strength of brightness/contrast/saturation jitter; 0 for none.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] | None = None,
        scale_range: Sequence[float] | None = None,
        hflip: bool = False,
        jitter: float = 0.0,
        pad_value: Sequence[int] = DEFAULT_PAD,
        ignore_index: int = IGNORE_INDEX,
    ):
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.hflip = hflip
        self.jitter = jitter
        self.pad_value = tuple(pad_value)
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale_range is not None:
            s = _uniform(*self.scale_range)
            h, w = image.shape[-2:]
            image, mask = resize_pair(image, mask, (max(1, round(h * s)), max(1, round(w * s))))
        if self.crop_size is not None:
            image, mask = self._random_crop(image, mask)
        if self.hflip and torch.rand(()).item() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.jitter > 0:
            image = color_jitter(image, self.jitter)
        return image.contiguous(), mask.contiguous()

    def _random_crop(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ch, cw = self.crop_size
        image, mask = pad_pair(image, mask, ch, cw, self.pad_value, self.ignore_index)
        h, w = image.shape[-2:]
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        return image[:, top : top + ch, left : left + cw], mask[..., top : top + ch, left : left + cw]

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"hflip={self.hflip}, jitter={self.jitter})"
        )


class PadCollate:
    """Batch samples of different sizes by padding each to the largest height and width in the
    batch (image with ``pad_value``, mask with ``ignore_index``) -> (uint8 N,3,H,W; int64 N,H,W)."""

    def __init__(self, pad_value: Sequence[int] = DEFAULT_PAD, ignore_index: int = IGNORE_INDEX):
        self.pad_value = tuple(pad_value)
        self.ignore_index = ignore_index

    def __call__(self, samples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not samples:
            return torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, 0, 0, dtype=torch.int64)
        height = max(image.shape[-2] for image, _ in samples)
        width = max(image.shape[-1] for image, _ in samples)
        padded = [pad_pair(image, mask, height, width, self.pad_value, self.ignore_index) for image, mask in samples]
        return torch.stack([p[0] for p in padded]), torch.stack([p[1] for p in padded])
