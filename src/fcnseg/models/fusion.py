"""Late fusion (Section 5 of the paper, NYUDv2): two FCN streams, one on colour and one on HHA, whose
class scores are summed.

``forward(x)`` takes (N, 6, H, W): channels 0-2 the colour image and 3-5 the HHA image, each
normalised as its stream was trained (``fcnseg.data.normalize``'s ``MODE+MODE``). Each stream is an
ordinary fcnseg FCN (``color.*`` and ``hha.*`` in the state dict, fcnseg's FCN keys below them).
The scores are summed with the reference's weights, 0.5 each (nyud-fcn32s-color-hha's Eltwise
``score_fused``, coefficients 0.5 and 0.5, on score_frcolor and score_frhha before the shared fixed
upsampler): the upsampler is linear and the same in both streams, so averaging the streams' outputs
gives the reference's scores exactly.
"""

from __future__ import annotations

from torch import Tensor, nn

from fcnseg.models.fcn import FCN, build_trunk, fcn_skips
from fcnseg.models.registry import ModelEntry, register_model
from fcnseg.models.surgery import WeightsSource

STREAMS = ("color", "hha")  # the reference's layer-name suffixes, in input-channel order
FUSION_WEIGHTS = (0.5, 0.5)  # the reference's Eltwise coefficients


class LateFusionFCN(nn.Module):
    """Two FCNs of the same architecture; output = 0.5 * color(x[:, :3]) + 0.5 * hha(x[:, 3:])."""

    in_channels = 6

    def __init__(self, color: FCN, hha: FCN, weights: tuple[float, float] = FUSION_WEIGHTS) -> None:
        super().__init__()
        if color.num_classes != hha.num_classes:
            raise ValueError("the two streams must predict the same classes")
        self.color = color
        self.hha = hha
        self.weights = tuple(float(w) for w in weights)
        self.num_classes = color.num_classes
        self.output_stride = color.output_stride
        self.score_stride = color.score_stride

    def streams(self) -> dict[str, FCN]:
        """The streams by the reference's suffix: {"color": ..., "hha": ...}."""
        return {name: getattr(self, name) for name in STREAMS}

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"late fusion takes 6 channels (RGB then HHA), got {x.shape[1]}")
        a, b = self.weights
        return a * self.color(x[:, :3]) + b * self.hha(x[:, 3:])


def _fusion_builder(base: str):
    skips, scales = fcn_skips(base)

    def build(
        num_classes: int,
        backbone: str,
        geometry: str,
        width: float,
        weights: WeightsSource | None,
        learn_skip_upsample: bool = True,
        learn_final_upsample: bool = False,
    ) -> LateFusionFCN:
        def stream() -> FCN:
            trunk = build_trunk(backbone, geometry, width, weights)
            return FCN(trunk, num_classes, skips, scales, learn_skip_upsample, learn_final_upsample)

        return LateFusionFCN(stream(), stream())

    return build


for _base in ("fcn32s", "fcn16s", "fcn8s"):
    register_model(
        f"{_base}-fusion",
        ModelEntry(
            _fusion_builder(_base),
            ("vgg16", "vgg16_bn"),
            ("caffe", "same"),
            f"RGB-HHA late fusion: two {_base} streams (colour, HHA) on 6-channel input, scores summed x0.5",
            in_channels=LateFusionFCN.in_channels,
        ),
    )
