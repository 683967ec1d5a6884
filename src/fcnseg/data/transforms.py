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


def elastic_field(height: int, width: int, sigma: float, grid: int = 3) -> torch.Tensor:
    """A smooth random displacement field (2, H, W) in pixels (x then y): displacements drawn from
    N(0, sigma^2) on a coarse ``grid`` x ``grid`` lattice spanning the image, interpolated bicubically
    to every pixel (U-Net's elastic deformation: 3x3 grid, sigma 10 pixels)."""
    coarse = torch.randn(1, 2, grid, grid) * sigma
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0]


def elastic_deform(
    image: torch.Tensor, labels: Sequence[torch.Tensor], field: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Warp ``image`` (3, H, W uint8) bicubically and each label map (..., H, W integers: class ids,
    instance ids, stacked masks) by nearest neighbour, so labels stay labels, with ``field`` (2, H, W) pixels:
    output pixel p reads input position p + field(p). Borders are mirrored."""
    height, width = image.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    # grid_sample's coordinates with align_corners=True: -1 and 1 are the centres of the edge pixels
    gx = (xs + field[0]) * (2 / max(width - 1, 1)) - 1
    gy = (ys + field[1]) * (2 / max(height - 1, 1)) - 1
    grid = torch.stack([gx, gy], dim=-1)[None]

    def warp(x: torch.Tensor, mode: str) -> torch.Tensor:
        return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=True)[0]

    warped = warp(image[None].float(), "bicubic").round_().clamp_(0, 255).to(torch.uint8)
    # float32 holds integer ids exactly up to 2^24
    return warped, [
        warp(label.reshape(1, -1, height, width).float(), "nearest").reshape(label.shape).to(label.dtype)
        for label in labels
    ]


class TrainTransform:
    """Training augmentation, in this order: random scale, elastic deformation, random crop (padding
    first when the image is smaller than the crop), horizontal flip, photometric jitter (cropping
    first keeps the per-pixel work small).

    crop_size:   int or (H, W); None keeps whole images (the paper's whole-image training).
    scale_range: (low, high) factor for a random rescale; None for no rescale.
    hflip:       flip left-right with probability 1/2.
    jitter:      strength of brightness/contrast/saturation jitter; 0 for none.
    elastic:     standard deviation in pixels of U-Net's elastic deformation (random displacements
                 on a 3x3 grid, bicubic; the paper's is 10); 0 for none.

    Called as ``transform(image, mask, *labels)``: extra label maps (e.g. instance ids) get the
    mask's geometric transforms (nearest neighbour; padding with 0) and are returned after it.

    Every random draw is from torch's CPU generator (``draws_only_from_torch``): the training stream
    seeds and restores that one alone around each sample (a test holds Python's and NumPy's still).
    """

    draws_only_from_torch = True

    def __init__(
        self,
        crop_size: int | Sequence[int] | None = None,
        scale_range: Sequence[float] | None = None,
        hflip: bool = False,
        jitter: float = 0.0,
        pad_value: Sequence[int] = DEFAULT_PAD,
        ignore_index: int = IGNORE_INDEX,
        elastic: float = 0.0,
    ):
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.hflip = hflip
        self.jitter = jitter
        self.elastic = elastic
        self.pad_value = tuple(pad_value)
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, *labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.scale_range is not None:
            s = _uniform(*self.scale_range)
            h, w = image.shape[-2:]
            size = (max(1, round(h * s)), max(1, round(w * s)))
            labels = tuple(resize_pair(image, label, size)[1] for label in labels)
            image, mask = resize_pair(image, mask, size)
        if self.elastic > 0:
            image, (mask, *labels) = elastic_deform(
                image, [mask, *labels], elastic_field(*image.shape[-2:], self.elastic)
            )
        if self.crop_size is not None:
            image, mask, labels = self._random_crop(image, mask, labels)
        if self.hflip and torch.rand(()).item() < 0.5:
            image, mask, labels = image.flip(-1), mask.flip(-1), tuple(label.flip(-1) for label in labels)
        if self.jitter > 0:
            image = color_jitter(image, self.jitter)
        return (image.contiguous(), mask.contiguous(), *(label.contiguous() for label in labels))

    def _random_crop(self, image: torch.Tensor, mask: torch.Tensor, labels: Sequence[torch.Tensor]):
        ch, cw = self.crop_size
        labels = [pad_pair(image, label, ch, cw, self.pad_value, 0)[1] for label in labels]
        image, mask = pad_pair(image, mask, ch, cw, self.pad_value, self.ignore_index)
        h, w = image.shape[-2:]
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        rows, cols = slice(top, top + ch), slice(left, left + cw)
        return image[:, rows, cols], mask[..., rows, cols], tuple(label[rows, cols] for label in labels)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"hflip={self.hflip}, jitter={self.jitter}, elastic={self.elastic})"
        )


class PadCollate:
    """Batch samples of different sizes by padding each to the largest height and width in the
    batch (image with ``pad_value``, mask with ``ignore_index``) -> (uint8 N,3,H,W; int64 N,H,W).
    Samples with a third map (per-pixel loss weights) give it as a third batch, padded with 0."""

    def __init__(self, pad_value: Sequence[int] = DEFAULT_PAD, ignore_index: int = IGNORE_INDEX):
        self.pad_value = tuple(pad_value)
        self.ignore_index = ignore_index

    def __call__(self, samples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not samples:
            return torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, 0, 0, dtype=torch.int64)
        height = max(s[0].shape[-2] for s in samples)
        width = max(s[0].shape[-1] for s in samples)
        padded = [pad_pair(s[0], s[1], height, width, self.pad_value, self.ignore_index) for s in samples]
        batch = (torch.stack([p[0] for p in padded]), torch.stack([p[1] for p in padded]))
        if len(samples[0]) > 2:  # per-pixel weights: padding weighs nothing
            batch += (torch.stack([pad_pair(s[0], s[2], height, width, self.pad_value, 0)[1] for s in samples]),)
        return batch
