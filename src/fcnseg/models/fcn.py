"""The FCN skip architecture (FCN-32s, FCN-16s, FCN-8s, FCN-8s at-once) on a classification trunk.

One head builder serves every variant: scores from fc7 (``score_fr``) are upsampled 2x and summed
with scores from pool4, then pool3, ... (``skips``), and the result is upsampled to the input by
the remaining factor. All crops are computed from the layers' geometry (fcnseg.models.geometry).

Layer names follow the reference: ``score_fr``, ``score_pool4``, ``score_pool3``, ``upscore2``
(fc7 scores x2), ``upscore_pool4`` (fused pool4 scores x2) and ``upscore{N}`` for the final
upsampling by N (32, 16 or 8). The trunk lives under ``backbone.`` with torchvision's key names.

Initialisation as in the reference: score layers zero, upsamplers bilinear. Which upsamplers learn:
the 2x skip upsamplers are learned by default (``learn_skip_upsample=True``, as in the paper) and
the final one is fixed bilinear (``learn_final_upsample=False``); a fixed upsampler is a buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from fcnseg.models.backbones import TRUNKS, ClassifierTrunk
from fcnseg.models.geometry import CoordMap, compose, crop_offset, integer_offset
from fcnseg.models.layers import BilinearUpsample, fuse, pad_to_multiple, score_layer
from fcnseg.models.registry import ModelEntry, register_model
from fcnseg.models.surgery import WeightsSource, load_trunk_weights


@dataclass(frozen=True)
class _Skip:
    tap: str  # trunk map whose scores are fused, e.g. "pool4"
    upsampler: str  # attribute name of the 2x upsampler applied to the coarser scores
    scorer: str  # attribute name of the 1x1 score layer on the tap
    scale: float  # the at-once variant scales the tap before scoring
    offset: int  # crop offset of the skip scores relative to the upsampled ones (see fuse)


class FCN(nn.Module):
    """A fully convolutional network: trunk + score layers + skip fusion + upsampling to the input.

    ``forward(x)`` takes (N, 3, H, W) and returns (N, num_classes, H, W) scores for any H, W >= 1.
    ``output_stride`` is the trunk's coarsest stride (32 for VGG16 and AlexNet, whatever the skips):
    the pooling grid repeats every ``output_stride`` pixels. ``score_stride`` is the stride of the
    finest score map, the one upsampled to the input (FCN-32s 32, FCN-16s 16, FCN-8s 8).
    """

    def __init__(
        self,
        backbone: ClassifierTrunk,
        num_classes: int,
        skips: tuple[str, ...] = (),
        skip_scales: dict[str, float] | None = None,
        learn_skip_upsample: bool = True,
        learn_final_upsample: bool = False,
    ) -> None:
        super().__init__()
        skip_scales = skip_scales or {}
        self.backbone = backbone
        self.num_classes = num_classes
        self.output_stride = backbone.output_stride
        self.score_fr = score_layer(backbone.channels["fc7"], num_classes)
        scores = compose([*backbone.layers_to("fc7"), self.score_fr])
        previous = "fr"
        self._skips: list[_Skip] = []
        for tap in skips:
            upsampler = "upscore2" if previous == "fr" else f"upscore_{previous}"
            setattr(self, upsampler, BilinearUpsample(num_classes, 2, learn_skip_upsample))
            setattr(self, f"score_{tap}", score_layer(backbone.channels[tap], num_classes))
            upsampled = scores.then(getattr(self, upsampler))
            skip = compose(backbone.layers_to(tap))
            offset = integer_offset(crop_offset(skip, upsampled))
            self._skips.append(_Skip(tap, upsampler, f"score_{tap}", skip_scales.get(tap, 1.0), offset))
            scores = upsampled if offset >= 0 else skip  # the fused map has the cropped-to grid
            previous = tap
        factor = int(scores.stride)
        self.score_stride = factor
        self.final_name = f"upscore{factor}"
        kernel = 2 * factor - 1 if backbone.odd_upsampler else None  # FCN-AlexNet: 63x63, crop 18
        setattr(self, self.final_name, BilinearUpsample(num_classes, factor, learn_final_upsample, kernel))
        output = scores.then(getattr(self, self.final_name))
        self.output_offset = integer_offset(crop_offset(output, CoordMap()))
        self._taps = ("fc7", *skips)

    def forward(self, x: Tensor) -> Tensor:
        image = x
        x = pad_to_multiple(x, self.backbone.input_multiple)
        taps = self.backbone.forward_taps(x, self._taps)
        scores = self.score_fr(taps["fc7"])
        for skip in self._skips:
            upsampled = getattr(self, skip.upsampler)(scores)
            feature = taps[skip.tap] if skip.scale == 1.0 else taps[skip.tap] * skip.scale
            scores = fuse(upsampled, getattr(self, skip.scorer)(feature), skip.offset)
        out = getattr(self, self.final_name)(scores)
        off = self.output_offset
        return out[:, :, off : off + image.shape[-2], off : off + image.shape[-1]]

    def crop_offsets(self) -> dict[str, int]:
        """The computed crops, by the reference's names (e.g. {"score_pool4": 5, "upscore8": 31})."""
        offsets = {skip.scorer: skip.offset for skip in self._skips}
        offsets[self.final_name] = self.output_offset
        return offsets


def build_trunk(backbone: str, geometry: str, width: float, weights: WeightsSource | None) -> ClassifierTrunk:
    """A VGG16/VGG16-BN/AlexNet/CaffeNet trunk without fc8, optionally loaded from a torchvision file (fc8 is ignored)."""
    trunk = TRUNKS[backbone](width=width, geometry=geometry)
    if weights is not None:
        load_trunk_weights(trunk, weights)
    return trunk


def _fcn_builder(skips: tuple[str, ...], skip_scales: dict[str, float] | None = None):
    def build(
        num_classes: int,
        backbone: str,
        geometry: str,
        width: float,
        weights: WeightsSource | None,
        learn_skip_upsample: bool = True,
        learn_final_upsample: bool = False,
    ) -> FCN:
        return FCN(
            build_trunk(backbone, geometry, width, weights),
            num_classes,
            skips,
            skip_scales,
            learn_skip_upsample,
            learn_final_upsample,
        )

    return build


_GEOMETRIES = ("caffe", "same")
_VGG = ("vgg16", "vgg16_bn")
register_model(
    "fcn32s",
    ModelEntry(
        _fcn_builder(()), ("vgg16", "vgg16_bn", "alexnet", "caffenet"), _GEOMETRIES, "FCN-32s: fc7 scores upsampled 32x"
    ),
)
register_model(
    "fcn16s", ModelEntry(_fcn_builder(("pool4",)), _VGG, _GEOMETRIES, "FCN-16s: + pool4 scores, upsampled 16x")
)
register_model(
    "fcn8s", ModelEntry(_fcn_builder(("pool4", "pool3")), _VGG, _GEOMETRIES, "FCN-8s: + pool3 scores, upsampled 8x")
)
register_model(
    "fcn8s-atonce",
    ModelEntry(
        _fcn_builder(("pool4", "pool3"), {"pool4": 1e-2, "pool3": 1e-4}),
        _VGG,
        _GEOMETRIES,
        "FCN-8s trained at once: pool4 x0.01, pool3 x1e-4",
    ),
)
