"""The model registry: ``build_model`` (the bare architecture) and ``list_models``.

The public ``create_model`` (``fcnseg.create_model`` = ``fcnseg.models.create_model``) lives in
``fcnseg.weights.api``: it calls ``build_model`` and also takes trained ``weights=``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.models.surgery import WeightsSource


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]  # builder(num_classes, backbone, geometry, width, weights, **options)
    backbones: tuple[str, ...]  # the first is the default
    geometries: tuple[str, ...]  # the first is the default
    summary: str
    takes_backbone_weights: bool = True  # False: no ImageNet trunk to load (U-Net), the builder says so
    in_channels: int = 3  # input channels (6: the RGB-HHA late-fusion models)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, entry: ModelEntry) -> None:
    """Add a model to the registry (used by the model modules at import time)."""
    _REGISTRY[name] = entry


def list_models() -> list[str]:
    """Names accepted by ``build_model`` / ``create_model``, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (backbones, geometries, summary); FcnsegError if unknown."""
    if name not in _REGISTRY:
        raise FcnsegError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_options(name: str) -> list[str]:
    """The options model ``name``'s builder takes beyond the common ones (e.g. ``geometric_classes``)."""
    common = ("num_classes", "backbone", "geometry", "width", "weights")
    return [p for p in inspect.signature(model_entry(name).builder).parameters if p not in common]


def build_model(
    name: str,
    num_classes: int,
    *,
    backbone: str | None = None,
    geometry: str | None = None,
    backbone_weights: WeightsSource | None = None,
    width: float = 1.0,
    **options,
) -> nn.Module:
    """Build a segmentation model (random or backbone-initialised weights; for trained weights use
    ``fcnseg.create_model(..., weights=)``). ``forward(x)``: (N, 3, H, W) float -> (N, num_classes, H, W) scores.

    Models (``backbone`` / ``geometry``: the first listed is the default; None picks it):
        fcn32s        VGG16, "alexnet" (torchvision's) or "caffenet" (the reference FCN-AlexNet's
                      two-tower trunk, 63x63 upsampler); scores from fc7 upsampled 32x.
        fcn16s        VGG16; + pool4 scores, upsampled 16x.
        fcn8s         VGG16; + pool3 scores, upsampled 8x.
        fcn8s-atonce  VGG16; FCN-8s trained in one stage: pool4 scaled by 0.01 and pool3 by 1e-4.
        fcn32s-fusion, fcn16s-fusion, fcn8s-fusion   RGB-HHA late fusion (NYUDv2): two such FCNs,
                      ``color`` on channels 0-2 and ``hha`` on 3-5 of a 6-channel input, scores summed x0.5.
            geometry "caffe" (reference: 100-pixel pad, ceil pooling, computed crops) or "same"
            (no big pad, outputs aligned to the input, ~40% fewer FLOPs).
            options: learn_skip_upsample=True (2x upsamplers learned, as in the paper),
            learn_final_upsample=False (final upsampler fixed bilinear, as in the paper),
            geometric_classes=0 (N > 0: SIFT Flow's second, geometric head with N classes;
            ``forward(x, all_heads=True)`` returns both heads' scores by name).
        fcn-resnet50, fcn-resnet101   dilated ResNet (output stride 8) + FCN head, torchvision's
            fcn_resnet50/101 layout (``backbone.*``, ``classifier.*``); bilinear output. Geometry "same".
        unet          U-Net (skip features concatenated, padded convs); geometry "same".
            options: batch_norm=True.
        unet-valid    U-Net as published: unpadded convs, cropped skips (``forward_valid``: 572 -> 388);
            ``forward`` mirror-extends any input and returns scores at its size. Geometry "valid".
            options: batch_norm=True.

    ``width`` multiplies every channel count (e.g. 1/16 for tiny test models).
    ``backbone_weights``: a path (or state dict) in torchvision's layout for the trunk, e.g.
    ``vgg16-397923af.pth``; a VGG/AlexNet file without fc layers loads with a warning (fc6/fc7 fresh).
    Every model has ``output_stride`` (its coarsest stride). Bad names/options raise FcnsegError.
    """
    entry = model_entry(name)
    backbone = backbone or entry.backbones[0]
    geometry = geometry or entry.geometries[0]
    if backbone not in entry.backbones:
        raise FcnsegError(f"model {name!r} has no backbone {backbone!r}; choose one of: {', '.join(entry.backbones)}")
    if geometry not in entry.geometries:
        raise FcnsegError(f"model {name!r} has no geometry {geometry!r}; choose one of: {', '.join(entry.geometries)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FcnsegError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise FcnsegError(f"width must be a number in (0, 4], got {width!r}")
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FcnsegError(
            f"model {name!r} has no option {unknown[0]!r}; its options are: {', '.join(accepted) or 'none'}"
        )
    return entry.builder(
        num_classes=num_classes,
        backbone=backbone,
        geometry=geometry,
        width=float(width),
        weights=backbone_weights,
        **options,
    )
