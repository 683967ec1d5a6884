"""Loading any supported weights file into an fcnseg model, recognised by content.

    .caffemodel           the FCN authors' Caffe models (fcn.berkeleyvision.org), ``layer`` or V1 ``layers``
    pytorch-fcn .pth      wkentaro/pytorch-fcn's state dicts (conv1_1.weight, ..., score_fr, upscore8)
    torchvision seg .pth  fcn_resnet50/101 (backbone.*, classifier.*; aux_classifier.* dropped)

(fcnseg's own checkpoints and exports, and which of these a file is, are read by fcnseg.weights.open.)

The Caffe and pytorch-fcn files use the reference's layer names, mapped here onto fcnseg's keys:
conv1_1 ... conv5_3 (FCN-AlexNet: conv1 ... conv5, on the caffenet trunk) -> ``backbone.features.<i>``
(torchvision's indices; CaffeNet's grouped blobs have PyTorch's grouped shape), fc6/fc7 ->
``backbone.classifier.0/3``, score_fr / score_pool4 / score_pool3 / upscore2 / upscore_pool4 keep
their names, and the final upsampler (``upscore`` in FCN-32s, ``upscore16``, ``upscore8``) is the
model's ``upscore{32,16,8}``. The architecture, class count and width are read from the file; every
layer of the model must be in the file with the same shape, and every layer with weights in the
file must be used. SIFT Flow's two-headed nets (``*_sem`` and ``*_geo`` layers) load as an FCN with
``geometric_classes``: the semantic layers under the usual names, the geometric ones under the same
names plus ``_geo`` (its final upsampler ``upscore_geo`` in FCN-32s is ``upscore32_geo``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.models.fcn import GEOMETRIC_SUFFIX

log = logging.getLogger(__name__)

VGG16_CONVS = (
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
)
CAFFENET_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
HEAD_LAYERS = ("score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4")
# The at-once net's fixed Scale layers: fcnseg's fcn8s-atonce applies the same constants.
ATONCE_SCALES = {"scale_pool4": 1e-2, "scale_pool3": 1e-4}
FIX = "pass the file with --model/--num-classes of the net it was trained as, or see `fcnseg weights list`"


def reference_names(model: nn.Module) -> dict[str, str]:
    """Reference layer name -> fcnseg parameter prefix, for an FCN on VGG16 or CaffeNet."""
    trunk = model.backbone
    conv_names = CAFFENET_CONVS if trunk.name == "caffenet" else VGG16_CONVS
    convs = [i for i, m in enumerate(trunk.features) if isinstance(m, nn.Conv2d)]
    fcs = [i for i, m in enumerate(trunk.classifier) if isinstance(m, nn.Conv2d)]
    names = {ref: f"backbone.features.{i}" for ref, i in zip(conv_names, convs)}
    names.update(fc6=f"backbone.classifier.{fcs[0]}", fc7=f"backbone.classifier.{fcs[1]}")
    names.update({ref: ref for ref in HEAD_LAYERS if hasattr(model, ref)})
    names[model.final_name] = model.final_name
    if getattr(model, "geometric_classes", 0):
        geo = [ref + GEOMETRIC_SUFFIX for ref in (*HEAD_LAYERS, model.final_name)]
        names.update({ref: ref for ref in geo if hasattr(model, ref)})
    return names


def _candidates(ref: str, final: str, suffix: str) -> list[str]:
    """The reference names that may hold fcnseg layer ``ref``: the semantic head with or without the
    SIFT Flow ``_sem`` suffix, the geometric head as named; the final upsampler is ``upscore`` in FCN-32s."""
    if ref.endswith(GEOMETRIC_SUFFIX):
        return [ref] + (["upscore" + GEOMETRIC_SUFFIX] if ref == final + GEOMETRIC_SUFFIX else [])
    return [ref + suffix, ref] + (["upscore" + suffix, "upscore"] if ref == final else [])


# ------------------------------------------------------------------------- state dicts and reference layers


def state_dict_kind(obj: Any, label: str) -> str:
    """ "pytorch-fcn", "torchvision-seg", "torchvision" or "state-dict" for a dict of tensors read from a
    torch or safetensors file (the file format itself is decided by fcnseg.weights.open.file_kind)."""
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise FcnsegError(
            f"{label} is a PyTorch file but neither an fcnseg checkpoint nor a state dict of "
            "tensors; pass an fcnseg .pt, a pytorch-fcn/torchvision .pth or a .caffemodel"
        )
    if "conv1_1.weight" in obj or ("conv1.weight" in obj and "fc6.weight" in obj and "score_fr.weight" in obj):
        return "pytorch-fcn"
    if "backbone.conv1.weight" in obj and "classifier.4.weight" in obj:
        return "torchvision-seg"
    if "features.0.weight" in obj or "conv1.weight" in obj:
        return "torchvision"
    return "state-dict"


def _reference_layers_from_state(state: dict) -> dict[str, list[torch.Tensor]]:
    """pytorch-fcn keys ("fc6.weight") grouped as reference layers {"fc6": [weight, bias]}."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        layer, _, kind = key.rpartition(".")
        layers.setdefault(layer, {})[kind] = value
    for name, params in layers.items():
        if "weight" not in params:
            raise FcnsegError(f"layer {name} has {', '.join(params)} but no weight")
    return {name: [p[k] for k in ("weight", "bias") if k in p] for name, p in layers.items()}


def _arch_from_reference(layers: dict, label: str) -> tuple[str, int, float, str, str, int]:
    """(model name, num_classes, width, head suffix, backbone, geometric classes) read off the reference
    layer names (geometric classes: 0, or the size of SIFT Flow's second head, ``score_fr_geo``)."""
    if "conv1" in layers and "fc6" in layers and "conv1_1" not in layers:  # FCN-AlexNet (CaffeNet trunk)
        if "score_fr" not in layers or "score_pool4" in layers:
            raise FcnsegError(
                f"{label} is an AlexNet but not the reference FCN-AlexNet (conv1..conv5, fc6, "
                f"fc7, score_fr, upscore); {FIX}"
            )
        num_classes = int(layers["score_fr"][0].shape[0])
        return "fcn32s", num_classes, int(layers["conv1"][0].shape[0]) / 96, "", "caffenet", 0
    if "conv1_1" not in layers:
        raise FcnsegError(
            f"{label} has no conv1_1 layer: it is not an FCN on VGG16 (layers: "
            f"{', '.join(list(layers)[:5])}, ...); {FIX}"
        )
    suffix = "" if "score_fr" in layers else "_sem" if "score_fr_sem" in layers else None
    if suffix is None:
        raise FcnsegError(
            f"{label} has no score_fr layer: it is a classification net (e.g. VGG16 "
            "ImageNet weights), not an FCN; pass it as --backbone-weights instead"
        )
    if "score_pool3" + suffix in layers:
        name = "fcn8s-atonce" if "scale_pool4" in layers else "fcn8s"
    elif "score_pool4" + suffix in layers:
        name = "fcn16s"
    else:
        name = "fcn32s"
    num_classes = int(layers["score_fr" + suffix][0].shape[0])
    width = int(layers["conv1_1"][0].shape[0]) / 64
    geo = "score_fr" + GEOMETRIC_SUFFIX
    geometric = int(layers[geo][0].shape[0]) if suffix and geo in layers else 0
    return name, num_classes, width, suffix, "vgg16", geometric


def load_reference(model: nn.Module, layers: dict[str, list], label: str, suffix: str = "") -> None:
    """Copy reference-named layers (Caffe blobs or pytorch-fcn tensors) into an fcnseg FCN."""
    own = model.state_dict()
    names = reference_names(model)
    final = model.final_name
    used = set()
    loaded: dict[str, torch.Tensor] = {}
    for ref, prefix in names.items():
        source = next((c for c in _candidates(ref, final, suffix) if c in layers), None)
        if source is None:
            raise FcnsegError(
                f"{label} lacks layer {ref} that {type(model).__name__} {getattr(model, 'final_name', '')} needs; {FIX}"
            )
        used.add(source)
        blobs = layers[source]
        for kind, blob in zip(("weight", "bias"), blobs):
            key = f"{prefix}.{kind}"
            if key not in own:
                if kind == "bias" and not np.any(np.asarray(blob)):
                    continue
                raise FcnsegError(
                    f"{label}: layer {source} has a {kind} that fcnseg's {key.rsplit('.', 1)[0]} lacks; {FIX}"
                )
            loaded[key] = _fit(
                torch.as_tensor(np.array(blob, dtype=np.float32, copy=True))
                if not torch.is_tensor(blob)
                else blob.float(),
                own[key],
                f"{label}: {source}",
            )
    missing = [k for k in own if k not in loaded]
    if missing:
        raise FcnsegError(f"{label} has no weights for {missing[0]}; {FIX}")
    extra = [n for n in layers if n not in used]
    for name in extra:
        if name in ATONCE_SCALES:
            value = float(np.asarray(layers[name][0]).ravel()[0])
            if not np.isclose(value, ATONCE_SCALES[name], rtol=1e-3):
                raise FcnsegError(
                    f"{label}: {name} is {value:g}, fcnseg's fcn8s-atonce uses "
                    f"{ATONCE_SCALES[name]:g}; this at-once variant is not supported"
                )
        else:
            raise FcnsegError(f"{label} has layers fcnseg's model does not ({', '.join(extra[:3])}); {FIX}")
    with torch.no_grad():
        for key, value in loaded.items():
            own[key].copy_(value)


def _fit(value: torch.Tensor, target: torch.Tensor, what: str) -> torch.Tensor:
    shape = tuple(value.shape)
    while len(shape) > target.dim() and shape[0] == 1:  # Caffe's legacy 4-D bias (1, 1, 1, N)
        shape = shape[1:]
    if shape == tuple(target.shape):
        return value.reshape(shape)
    if value.numel() == target.numel() and target.dim() == 4 and len(shape) <= 2:
        return value.reshape(target.shape)  # fully connected -> convolution
    raise FcnsegError(
        f"{what} has shape {'x'.join(map(str, value.shape))}, fcnseg expects {'x'.join(map(str, target.shape))}; {FIX}"
    )


def _torchvision_seg(state: dict, label: str) -> tuple[str, dict, dict]:
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("backbone.layer3.")}
    depth = {6: "resnet50", 23: "resnet101"}.get(len(blocks))
    if depth is None:
        raise FcnsegError(
            f"{label}: backbone.layer3 has {len(blocks)} blocks; expected a torchvision "
            "fcn_resnet50 (6) or fcn_resnet101 (23) file"
        )
    aux = [k for k in state if k.startswith("aux_classifier.")]
    if aux:
        log.info("%s: aux_classifier (the auxiliary training head, %d tensors) is dropped", label, len(aux))
    state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    kwargs = {
        "num_classes": int(state["classifier.4.weight"].shape[0]),
        "backbone": depth,
        "geometry": "same",
        "width": int(state["backbone.conv1.weight"].shape[0]) / 64,
    }
    return f"fcn-{depth}", kwargs, state


def _meta(model_name: str, kwargs: dict, normalization: str, entry, label: str):
    """The ModelMeta of a converted file: the registry entry's classes, palette and normalisation
    where the file is a published one, else VOC's names for 21 classes, none otherwise."""
    from fcnseg.data.voc import CLASS_NAMES, PALETTE
    from fcnseg.weights.meta import ModelMeta, published_data

    n = kwargs["num_classes"]
    if entry is not None:
        geometric = kwargs.get("geometric_classes", 0)
        if (
            entry.model_kwargs.get("num_classes", n) != n
            or (entry.class_names and len(entry.class_names) != n)
            or entry.model_kwargs.get("geometric_classes", geometric) != geometric
        ):
            raise FcnsegError(
                f"{label} has {n} classes, the registry entry {entry.name} "
                f"{entry.num_classes or entry.model_kwargs.get('num_classes')}; the file is not "
                f"the published one: re-download it with `fcnseg weights download {entry.name} --force`"
            )
        return ModelMeta(
            model_name,
            kwargs,
            entry.class_names,
            entry.palette,
            entry.normalization,
            source=entry.name,
            trained_on=published_data(entry.name),
            modality=entry.modality,
        )
    voc = n == len(CLASS_NAMES)
    return ModelMeta(
        model_name, kwargs, CLASS_NAMES if voc else (), PALETTE if voc else (), normalization, trained_on=None
    )


def _fused_streams(layers: dict[str, list]) -> dict[str, dict[str, list]] | None:
    """{stream: its reference layers, suffix removed, shared layers included} for a late-fusion file
    (conv1_1color and conv1_1hha), else None."""
    from fcnseg.models.fusion import STREAMS

    if not all(f"conv1_1{s}" in layers for s in STREAMS):
        return None
    shared = {n: b for n, b in layers.items() if not n.endswith(STREAMS)}
    return {s: {**shared, **{n[: -len(s)]: b for n, b in layers.items() if n.endswith(s)}} for s in STREAMS}


def _from_fused(streams: dict[str, dict[str, list]], kind: str, label: str, model: str | None, entry):
    """(late-fusion model, ModelMeta) from the two streams' layers (see the module docstring)."""
    from fcnseg.data.nyud import RGB_HHA_NORMALIZATION
    from fcnseg.models import build_model

    archs = {s: _arch_from_reference(layers, f"{label} ({s} stream)") for s, layers in streams.items()}
    if len(set(archs.values())) != 1:
        raise FcnsegError(f"{label}: the colour and HHA streams differ ({archs}); {FIX}")
    base, num_classes, width, _, backbone, geometric = next(iter(archs.values()))
    if geometric:
        raise FcnsegError(f"{label}: a late-fusion net with a geometric head is not one fcnseg knows; {FIX}")
    name = f"{base}-fusion"
    model = model or (entry.model if entry is not None else None)
    if model and model != name:
        raise FcnsegError(
            f"{label} holds an {name} (two streams, {kind} layer names), not a {model}; pass --model {name}"
        )
    kwargs = {"num_classes": num_classes, "backbone": backbone, "geometry": "caffe"}
    if width != 1:
        kwargs["width"] = width
    net = build_model(name, **kwargs)
    for stream, layers in streams.items():
        load_reference(getattr(net, stream), layers, f"{label} ({stream} stream)")
    meta = _meta(name, kwargs, RGB_HHA_NORMALIZATION, entry, label)
    return net.eval(), meta.with_(modality="rgb-hha", normalization=RGB_HHA_NORMALIZATION)


def from_reference(layers: dict[str, list], kind: str, label: str, *, model: str | None = None, entry=None):
    """(model, ModelMeta) from reference-named layers: a .caffemodel's blobs ("caffe") or a
    pytorch-fcn state dict regrouped ("pytorch-fcn")."""
    from fcnseg.models import build_model

    streams = _fused_streams(layers)
    if streams is not None:
        return _from_fused(streams, kind, label, model, entry)
    name, num_classes, width, suffix, backbone, geometric = _arch_from_reference(layers, label)
    model = model or (entry.model if entry is not None else None)
    if model and model != name and {model, name} != {"fcn8s", "fcn8s-atonce"}:
        raise FcnsegError(
            f"{label} holds an {name} ({kind} layer names), not a {model}; pass --model {name} or the matching file"
        )
    name = model or name
    kwargs = {"num_classes": num_classes, "backbone": backbone, "geometry": "caffe"}
    if width != 1:
        kwargs["width"] = width
    if geometric:
        kwargs["geometric_classes"] = geometric
    net = build_model(name, **kwargs)
    load_reference(net, layers, label, suffix)
    return net.eval(), _meta(name, kwargs, "caffe", entry, label)


def from_state_dict(state: dict, label: str, *, model: str | None = None, entry=None):
    """(model, ModelMeta) from a state dict without fcnseg metadata: pytorch-fcn or torchvision's
    fcn_resnet. Backbone (classification) weights and unknown key sets are refused, naming the fix."""
    from fcnseg.models import build_model

    kind = state_dict_kind(state, label)
    if kind == "pytorch-fcn":
        try:
            layers = _reference_layers_from_state(state)
        except FcnsegError as exc:
            raise FcnsegError(f"{label}: {exc}; {FIX}") from None
        return from_reference(layers, kind, label, model=model, entry=entry)
    if kind == "torchvision-seg":
        name, kwargs, state = _torchvision_seg(state, label)
        model = model or (entry.model if entry is not None else None)
        if model and model != name:
            raise FcnsegError(f"{label} holds a torchvision {name}, not a {model}; pass --model {name}")
        if kwargs["width"] == 1:
            del kwargs["width"]
        net = build_model(name, **kwargs)
        own = net.state_dict()
        for key, value in state.items():
            if key in own and tuple(value.shape) != tuple(own[key].shape):
                _fit(value, own[key], f"{label}: tensor {key}")
        missing, unexpected = net.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.endswith("num_batches_tracked")] or unexpected
        if bad:
            what = "lacks" if [k for k in missing if not k.endswith("num_batches_tracked")] else "has unexpected"
            raise FcnsegError(
                f"{label} {what} {bad[0]}{' and more' if len(bad) > 1 else ''}; "
                f"expected a torchvision {name} state dict"
            )
        return net.eval(), _meta(name, kwargs, "imagenet", entry, label)
    if kind == "torchvision":
        raise FcnsegError(
            f"{label} is an ImageNet backbone (torchvision classification weights), not a "
            "segmentation model; pass it as --backbone-weights / backbone_weights="
        )
    raise FcnsegError(
        f"{label} is a state dict whose keys fcnseg does not recognise "
        f"({', '.join(list(state)[:3])}, ...); save it as an fcnseg checkpoint "
        "(fcnseg train) or pass a .caffemodel / pytorch-fcn / torchvision file"
    )
