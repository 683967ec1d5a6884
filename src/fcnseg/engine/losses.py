"""Per-pixel softmax cross-entropy as trained in the FCN paper, plus class weights and loss sampling."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fcnseg.errors import FcnsegError


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = 255,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    sample_prob: float = 1.0,
    pixel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of (N, C, H, W) scores against (N, H, W) labels.

    ``reduction="sum"`` is the paper's unnormalised loss (summed over every labelled pixel);
    ``"mean"`` divides by the (weighted) number of labelled pixels kept. ``sample_prob < 1`` is loss
    sampling (Section 3.4): each output cell's loss is kept with that probability, the rest ignored,
    which is what patchwise training amounts to. Pixels labelled ``ignore_index`` never count.
    ``pixel_weight`` (N, H, W) multiplies each pixel's loss (U-Net's weight map); ``"mean"`` then
    divides by the summed weights of the labelled pixels kept.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if sample_prob < 1.0:
        dropped = torch.rand(target.shape, device=target.device) >= sample_prob
        target = target.masked_fill(dropped, ignore_index)
    logits = logits.float()  # the loss is always computed in fp32, also under autocast
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="none")
    if pixel_weight is not None:
        per_pixel = per_pixel * pixel_weight.to(per_pixel)
    total = per_pixel.sum()
    if reduction == "sum":
        return total
    labelled = target != ignore_index
    kept = labelled.float() if weight is None else weight[target.clamp(0, weight.numel() - 1)] * labelled
    if pixel_weight is not None:
        kept = kept * pixel_weight.to(kept)
    denom = kept.sum()
    return total / denom.clamp(min=1)


def load_class_weights(path: str | Path, num_classes: int) -> torch.Tensor:
    """One weight per class from a JSON list or a text file of whitespace/comma-separated numbers."""
    path = Path(path)
    if not path.is_file():
        raise FcnsegError(f"class-weights file {path} does not exist; pass 'median' or a file of {num_classes} numbers")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else [float(v) for v in text.replace(",", " ").split()]
        weights = torch.tensor(values, dtype=torch.float32)
    except (ValueError, TypeError):
        raise FcnsegError(f"class-weights file {path} must hold numbers only (one per class)") from None
    if weights.ndim != 1 or weights.numel() != num_classes:
        raise FcnsegError(
            f"class-weights file {path} has {weights.numel()} values but the data has "
            f"{num_classes} classes; write one weight per class"
        )
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise FcnsegError(f"class-weights file {path} holds negative or non-finite weights")
    return weights
