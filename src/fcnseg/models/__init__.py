"""Segmentation models: the FCN family on VGG16/AlexNet, RGB-HHA late fusion, dilated-ResNet FCN, U-Net.

    build_model(name, num_classes, *, backbone=None, geometry=None, backbone_weights=None,
                width=1.0, **options) -> nn.Module      the bare architecture (docstring: every name)
    create_model(name, num_classes, ..., weights=None)  the public one: build_model, or trained weights
                                                        by name/file (= fcnseg.create_model, defined in
                                                        fcnseg.weights.api, imported on first use)
    list_models() -> list[str]
    load_matching(model, state_dict) -> (loaded_keys, skipped_keys)     staged initialisation
    count_flops(model, (H, W)) -> int                                    counted, not estimated
    count_parameters(model) -> int                                       learned + fixed upsamplers
    bilinear_kernel(k) -> Tensor                                         the upsampling filter

Every model's forward maps (N, 3, H, W) to (N, num_classes, H, W) for any H, W >= 1 and has an
``output_stride`` attribute; the late-fusion models (``fcn32s-fusion``, ...) take (N, 6, H, W).
"""

from fcnseg.models import fcn, fusion, resnet, unet  # noqa: F401  (importing registers the models)
from fcnseg.models.fcn import FCN
from fcnseg.models.flops import count_flops, count_parameters
from fcnseg.models.layers import BilinearUpsample, bilinear_kernel
from fcnseg.models.registry import build_model, list_models, model_entry, model_options
from fcnseg.models.surgery import load_backbone_weights, load_matching

__all__ = [
    "FCN",
    "BilinearUpsample",
    "bilinear_kernel",
    "count_flops",
    "count_parameters",
    "build_model",
    "create_model",
    "list_models",
    "model_entry",
    "model_options",
    "load_backbone_weights",
    "load_matching",
]


def __getattr__(name: str):
    if name == "create_model":  # one public create_model: the one that also takes trained weights
        from fcnseg.weights.api import create_model

        return create_model
    raise AttributeError(f"module 'fcnseg.models' has no attribute {name!r}")
