"""Segmentation models: the FCN family on VGG16/AlexNet, dilated-ResNet FCN, U-Net.

    create_model(name, num_classes, *, backbone=None, geometry=None, backbone_weights=None,
                 width=1.0, **options) -> nn.Module     (see create_model's docstring for names)
    list_models() -> list[str]
    load_matching(model, state_dict) -> (loaded_keys, skipped_keys)     staged initialisation
    count_flops(model, (H, W)) -> int                                    counted, not estimated
    count_parameters(model) -> int                                       learned + fixed upsamplers
    bilinear_kernel(k) -> Tensor                                         the upsampling filter

Every model's forward maps (N, 3, H, W) to (N, num_classes, H, W) for any H, W >= 1 and has an
``output_stride`` attribute.
"""

from fcnseg.models import fcn, resnet, unet  # noqa: F401  (importing registers the models)
from fcnseg.models.fcn import FCN
from fcnseg.models.flops import count_flops, count_parameters
from fcnseg.models.layers import BilinearUpsample, bilinear_kernel
from fcnseg.models.registry import create_model, list_models, model_entry
from fcnseg.models.surgery import load_backbone_weights, load_matching

__all__ = ["FCN", "BilinearUpsample", "bilinear_kernel", "count_flops", "count_parameters", "create_model",
           "list_models", "model_entry", "load_backbone_weights", "load_matching"]
