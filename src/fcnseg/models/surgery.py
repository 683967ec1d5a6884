"""Weight import: torchvision-layout files into fcnseg trunks (fc -> conv surgery), and staged init.

``load_backbone_weights`` reads a plain state dict (torchvision's ``vgg16-397923af.pth``,
``alexnet-owt-7be5be79.pth``, ``resnet50-*.pth``, ...) with weights_only=True, reshapes fully
connected weights into the trunk's convolutions (fc6: 4096 x 25088 -> 4096 x 512 x 7 x 7; fc7,
fc8: 4096 x 4096 -> 4096 x 4096 x 1 x 1; torchvision flattens pool5 channel-major, which is exactly
this reshape) and checks every key and shape. ``load_matching`` carries every layer whose name and
shape match from one model to another (FCN-32s -> FCN-16s -> FCN-8s).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.files import safe_torch_load

log = logging.getLogger(__name__)

WeightsSource = str | os.PathLike | Mapping


def _read_state_dict(source: WeightsSource, what: str) -> tuple[Mapping, str]:
    """(state dict, label for messages) from a path or an in-memory mapping."""
    if isinstance(source, Mapping):
        state, label = source, "(in-memory state dict)"
    else:
        state, label = safe_torch_load(source, what), str(source)
    if isinstance(state, Mapping) and state.get("format") == "fcnseg.checkpoint":
        state = state["model"]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise FcnsegError(
            f"{what} {label} is not a state dict of tensors; pass a file saved with "
            "torch.save(model.state_dict(), path)"
        )
    return state, label


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def load_backbone_weights(
    module: nn.Module,
    source: WeightsSource,
    *,
    what: str,
    expected: str,
    strip_prefix: str = "",
    ignore: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> list[str]:
    """Load a torchvision-layout state dict into ``module`` (a trunk); returns the loaded keys.

    Every key of ``module`` must be in the file with the same shape (a 2-D fc weight may stand in
    for a convolution of the same size), except keys starting with an ``optional`` prefix: if all
    of those are absent they start fresh with a warning; if only some are, it is an error. File
    keys starting with an ``ignore`` prefix (e.g. fc8, the ImageNet classifier) are skipped; other
    unknown keys are an error. ``expected`` describes the right file for messages. ``strip_prefix``
    is removed from file keys that have it (e.g. "backbone." in a segmentation model's file).
    """
    state, label = _read_state_dict(source, what)
    if strip_prefix:
        state = {k.removeprefix(strip_prefix): v for k, v in state.items()}
    own = module.state_dict()
    unknown = [k for k in state if k not in own and not k.startswith(ignore) and not k.endswith("num_batches_tracked")]
    if unknown:
        raise FcnsegError(
            f"{what} {label} has unexpected keys ({', '.join(unknown[:3])}"
            f"{', ...' if len(unknown) > 3 else ''}); expected {expected}"
        )
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    missing_required = [k for k in missing if not k.startswith(optional)]
    if missing_required:
        more = f" and {len(missing_required) - 1} more keys" if len(missing_required) > 1 else ""
        raise FcnsegError(f"{what} {label} lacks {missing_required[0]}{more}; expected {expected}")
    optional_keys = [k for k in own if k.startswith(optional)] if optional else []
    if missing and len(missing) < len(optional_keys):
        raise FcnsegError(
            f"{what} {label} has only some of the fully connected layers (lacks "
            f"{missing[0]}); expected {expected}, with all fc layers or none (features only)"
        )
    loaded = {}
    for key, target in own.items():
        if key not in state:
            continue
        value = state[key]
        if value.shape != target.shape and value.numel() == target.numel() and value.dim() == 2 and target.dim() == 4:
            value = value.reshape(target.shape)  # fully connected -> convolution
        if value.shape != target.shape:
            raise FcnsegError(
                f"{what} {label}: {key} has shape {_shape(value.shape)}, expected "
                f"{_shape(target.shape)} (model width or architecture differs); "
                f"expected {expected}"
            )
        loaded[key] = value
    with torch.no_grad():
        for key, value in loaded.items():
            own[key].copy_(value)
    if missing:
        layers = ", ".join(sorted({k.rsplit(".", 1)[0] for k in missing}))
        log.warning("%s %s has no fully connected layers (%s): fc6/fc7 start fresh (random init)", what, label, layers)
    return list(loaded)


def load_matching(model: nn.Module, state_dict: WeightsSource) -> tuple[list[str], list[str]]:
    """Copy every entry of ``state_dict`` whose key and shape match ``model``'s (staged init).

    Returns (loaded_keys, skipped_keys): skipped are the file's keys that the model lacks or holds
    with another shape (e.g. FCN-32s's ``upscore32`` when initialising FCN-16s). ``state_dict``
    may also be a path or an fcnseg checkpoint (its model weights are used).
    """
    state, _ = _read_state_dict(state_dict, "weights")
    own = model.state_dict()
    loaded, skipped = [], []
    with torch.no_grad():
        for key, value in state.items():
            if key in own and own[key].shape == value.shape:
                own[key].copy_(value)
                loaded.append(key)
            else:
                skipped.append(key)
    return loaded, skipped


def load_trunk_weights(trunk: nn.Module, source: WeightsSource) -> list[str]:
    """Load a torchvision VGG16/AlexNet file into a ClassifierTrunk (fc layers reshaped to convolutions).

    fc8 (``classifier.6``, ImageNet's 1000 classes) is loaded only if the trunk has an fc8 of that
    size, and ignored otherwise (FCNs replace it by a zero-initialised ``score_fr``). A
    features-only file loads with a warning: fc6/fc7 keep their random initialisation.
    """
    from fcnseg.models.backbones import EXPECTED_FILES

    has_fc8 = len(trunk.classifier) > 6
    return load_backbone_weights(
        trunk,
        source,
        what="backbone weights file",
        expected=EXPECTED_FILES[trunk.name],
        ignore=() if has_fc8 else ("classifier.6.",),
        optional=("classifier.",),
    )
