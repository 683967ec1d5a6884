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

from fcnseg.errors import FcnsegError
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


GEOMETRIC_SUFFIX = "_geo"  # the reference's name suffix for SIFT Flow's geometric head (score_fr_geo, ...)


@dataclass(frozen=True)
class _Head:
    scorer: str  # the 1x1 score layer on fc7, e.g. "score_fr" or "score_fr_geo"
    skips: tuple[_Skip, ...]
    final: str  # the final upsampler, e.g. "upscore8" or "upscore8_geo"


class FCN(nn.Module):
    """A fully convolutional network: trunk + score layers + skip fusion + upsampling to the input.

    ``forward(x)`` takes (N, 3, H, W) and returns (N, num_classes, H, W) scores for any H, W >= 1.
    ``output_stride`` is the trunk's coarsest stride (32 for VGG16 and AlexNet, whatever the skips):
    the pooling grid repeats every ``output_stride`` pixels. ``score_stride`` is the stride of the
    finest score map, the one upsampled to the input (FCN-32s 32, FCN-16s 16, FCN-8s 8).

    ``geometric_classes`` > 0 adds the SIFT Flow nets' second head on the same trunk: its own score,
    skip and upsampling layers, named as the semantic ones plus ``_geo`` (``score_fr_geo``,
    ``upscore2_geo``, ..., ``upscore8_geo``). ``forward(x)`` still returns the semantic scores;
    ``forward(x, all_heads=True)`` returns ``{"semantic": ..., "geometric": ...}`` (``head_names``).
    """

    def __init__(
        self,
        backbone: ClassifierTrunk,
        num_classes: int,
        skips: tuple[str, ...] = (),
        skip_scales: dict[str, float] | None = None,
        learn_skip_upsample: bool = True,
        learn_final_upsample: bool = False,
        geometric_classes: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.geometric_classes = geometric_classes
        self.output_stride = backbone.output_stride
        options = (skips, skip_scales or {}, learn_skip_upsample, learn_final_upsample)
        self._heads = {"semantic": self._add_head(num_classes, "", *options)}
        if geometric_classes:
            self._heads["geometric"] = self._add_head(geometric_classes, GEOMETRIC_SUFFIX, *options)
        self.head_names = tuple(self._heads)
        self._skips = self._heads["semantic"].skips
        self.final_name = self._heads["semantic"].final
        self._taps = ("fc7", *skips)

    def _add_head(
        self,
        classes: int,
        suffix: str,
        skips: tuple[str, ...],
        skip_scales: dict[str, float],
        learn_skip_upsample: bool,
        learn_final_upsample: bool,
    ) -> _Head:
        """Score, skip and upsampling layers for ``classes`` named with ``suffix``; the crops computed."""
        backbone = self.backbone
        scorer = f"score_fr{suffix}"
        setattr(self, scorer, score_layer(backbone.channels["fc7"], classes))
        scores = compose([*backbone.layers_to("fc7"), getattr(self, scorer)])
        previous = "fr"
        head_skips: list[_Skip] = []
        for tap in skips:
            upsampler = ("upscore2" if previous == "fr" else f"upscore_{previous}") + suffix
            setattr(self, upsampler, BilinearUpsample(classes, 2, learn_skip_upsample))
            setattr(self, f"score_{tap}{suffix}", score_layer(backbone.channels[tap], classes))
            upsampled = scores.then(getattr(self, upsampler))
            skip = compose(backbone.layers_to(tap))
            offset = integer_offset(crop_offset(skip, upsampled))
            head_skips.append(_Skip(tap, upsampler, f"score_{tap}{suffix}", skip_scales.get(tap, 1.0), offset))
            scores = upsampled if offset >= 0 else skip  # the fused map has the cropped-to grid
            previous = tap
        factor = int(scores.stride)
        self.score_stride = factor
        final = f"upscore{factor}{suffix}"
        kernel = 2 * factor - 1 if backbone.odd_upsampler else None  # FCN-AlexNet: 63x63, crop 18
        setattr(self, final, BilinearUpsample(classes, factor, learn_final_upsample, kernel))
        output = scores.then(getattr(self, final))
        self.output_offset = integer_offset(crop_offset(output, CoordMap()))
        return _Head(scorer, tuple(head_skips), final)

    def _head(self, head: _Head, taps: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
        scores = getattr(self, head.scorer)(taps["fc7"])
        for skip in head.skips:
            upsampled = getattr(self, skip.upsampler)(scores)
            feature = taps[skip.tap] if skip.scale == 1.0 else taps[skip.tap] * skip.scale
            scores = fuse(upsampled, getattr(self, skip.scorer)(feature), skip.offset)
        out = getattr(self, head.final)(scores)
        off = self.output_offset
        return out[:, :, off : off + size[0], off : off + size[1]]

    def forward(self, x: Tensor, all_heads: bool = False) -> Tensor | dict[str, Tensor]:
        size = (x.shape[-2], x.shape[-1])
        x = pad_to_multiple(x, self.backbone.input_multiple)
        taps = self.backbone.forward_taps(x, self._taps)
        if not all_heads:
            return self._head(self._heads["semantic"], taps, size)
        return {name: self._head(head, taps, size) for name, head in self._heads.items()}

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
        geometric_classes: int = 0,
    ) -> FCN:
        if isinstance(geometric_classes, bool) or not isinstance(geometric_classes, int) or geometric_classes < 0:
            raise FcnsegError(
                f"geometric_classes must be 0 (no geometric head) or a class count, got {geometric_classes!r}"
            )
        return FCN(
            build_trunk(backbone, geometry, width, weights),
            num_classes,
            skips,
            skip_scales,
            learn_skip_upsample,
            learn_final_upsample,
            geometric_classes,
        )

    return build


# model name -> (skips, skip scales): the one list of the skip variants
_SKIPS: dict[str, tuple[tuple[str, ...], dict[str, float] | None]] = {
    "fcn32s": ((), None),
    "fcn16s": (("pool4",), None),
    "fcn8s": (("pool4", "pool3"), None),
    "fcn8s-atonce": (("pool4", "pool3"), {"pool4": 1e-2, "pool3": 1e-4}),
}


def fcn_skips(name: str) -> tuple[tuple[str, ...], dict[str, float] | None]:
    """(skips, skip scales) of an FCN variant ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")."""
    return _SKIPS[name]


_GEOMETRIES = ("caffe", "same")
_VGG = ("vgg16", "vgg16_bn")
register_model(
    "fcn32s",
    ModelEntry(
        _fcn_builder(*fcn_skips("fcn32s")),
        ("vgg16", "vgg16_bn", "alexnet", "caffenet"),
        _GEOMETRIES,
        "FCN-32s: fc7 scores upsampled 32x",
    ),
)
register_model(
    "fcn16s",
    ModelEntry(_fcn_builder(*fcn_skips("fcn16s")), _VGG, _GEOMETRIES, "FCN-16s: + pool4 scores, upsampled 16x"),
)
register_model(
    "fcn8s", ModelEntry(_fcn_builder(*fcn_skips("fcn8s")), _VGG, _GEOMETRIES, "FCN-8s: + pool3 scores, upsampled 8x")
)
register_model(
    "fcn8s-atonce",
    ModelEntry(
        _fcn_builder(*fcn_skips("fcn8s-atonce")),
        _VGG,
        _GEOMETRIES,
        "FCN-8s trained at once: pool4 x0.01, pool3 x1e-4",
    ),
)
