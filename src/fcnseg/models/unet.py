"""U-Net (Ronneberger et al. 2015; shared/seeds/004): the FCN relative that concatenates skip features.

Encoder: five stages of two 3x3 convolutions (64, 128, 256, 512, 1024 channels, times ``width``),
2x2 max pooling between them. Decoder: a 2x2 stride-2 transposed convolution halves the channels,
the encoder map of the same size is concatenated, two 3x3 convolutions follow. A 1x1 convolution
gives the scores.

Two variants share these layers (and their state-dict keys):

* ``unet`` (:class:`UNet`): padded convolutions, inputs padded to a multiple of 16, so the output has
  the input's size.
* ``unet-valid`` (:class:`UNetValid`): the paper's network, unpadded ("valid") 3x3 convolutions, the
  skip features centre-cropped before concatenation; :meth:`UNetValid.forward_valid` maps 572x572 to
  388x388 (92 pixels of context lost on each side). Its ``forward`` extends the input by mirroring
  (the paper's border extrapolation) to the next size the network accepts and crops the scores back,
  so training, evaluation and export see the input's size, like every other model. Large images are
  predicted tile by tile (fcnseg.inference.overlap_tile), with the same result.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fcnseg.errors import FcnsegError
from fcnseg.models.layers import BatchNorm2d, mirror_pad, pad_to_multiple, scaled, tracing
from fcnseg.models.registry import ModelEntry, register_model
from fcnseg.models.surgery import WeightsSource

CHANNELS = (64, 128, 256, 512, 1024)


def double_conv(in_channels: int, out_channels: int, batch_norm: bool, padding: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with ReLU (and BatchNorm before each ReLU if ``batch_norm``); ``padding``
    0 is the paper's unpadded form (each convolution loses a pixel on every side)."""
    layers: list[nn.Module] = []
    for c_in in (in_channels, out_channels):
        layers.append(nn.Conv2d(c_in, out_channels, 3, padding=padding, bias=not batch_norm))
        if batch_norm:
            layers.append(BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UpBlock(nn.Module):
    """Upsample 2x (transposed conv), concatenate the skip features (centre-cropped to the upsampled
    map when larger: the unpadded network), two 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool, padding: int = 1) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = double_conv(2 * out_channels, out_channels, batch_norm, padding)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        top = (skip.shape[-2] - x.shape[-2]) // 2
        left = (skip.shape[-1] - x.shape[-1]) // 2
        skip = skip[..., top : top + x.shape[-2], left : left + x.shape[-1]]
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with padded convolutions: (N, 3, H, W) -> (N, num_classes, H, W) for any H, W."""

    output_stride = 2 ** (len(CHANNELS) - 1)

    padding = 1

    def __init__(self, num_classes: int, width: float = 1.0, batch_norm: bool = True) -> None:
        super().__init__()
        channels = [scaled(c, width) for c in CHANNELS]
        pad = self.padding
        self.encoder = nn.ModuleList(
            double_conv(c_in, c_out, batch_norm, pad) for c_in, c_out in zip((3, *channels[:-1]), channels)
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.decoder = nn.ModuleList(
            UpBlock(c_in, c_out, batch_norm, pad) for c_in, c_out in zip(channels[:0:-1], channels[-2::-1])
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2], x.shape[-1]
        return self.scores(pad_to_multiple(x, self.output_stride))[:, :, :height, :width]

    def scores(self, x: Tensor) -> Tensor:
        """The network itself: encoder, decoder with skips, 1x1 score layer."""
        skips = []
        for index, stage in enumerate(self.encoder):
            x = stage(x if index == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        return self.head(x)


# The unpadded network's geometry. Each 3x3 convolution loses 2 pixels and each pooling halves, so
# an input of n pixels gives n - 184 output pixels, when n - 184 = 16 * b - 60 for a whole b >= 4
# (b: the bottom stage's size), i.e. outputs of 4, 20, 36, ..., 388 (b = 28: the paper's 572 -> 388).
VALID_CONTEXT = 92  # input pixels consumed on each side
VALID_STEP = 16  # output sizes (and tile offsets that keep the pooling grid) come in steps of 16
VALID_PHASE = 4  # ... starting at 4: valid outputs are 4 + 16 k


def valid_output_size(length: int | Tensor) -> int | Tensor:
    """The smallest output size the unpadded U-Net produces that covers ``length`` (>= 1) pixels.

    Plain arithmetic (no ``max``, no branch), so a traced size (a 0-dim tensor) stays traced."""
    return VALID_PHASE + VALID_STEP * ((length - VALID_PHASE + VALID_STEP - 1) // VALID_STEP)


class UNetValid(UNet):
    """The paper's U-Net: unpadded convolutions, cropped skips; 572x572 -> 388x388 (:meth:`forward_valid`).

    ``forward`` accepts any size: it extends the input by mirroring (92 pixels on each side, plus up to
    15 at the bottom and right to reach a size the network accepts), runs :meth:`forward_valid` and
    crops the scores to the input's size; this equals overlap-tile prediction of the same image.
    """

    padding = 0
    context = VALID_CONTEXT

    def forward_valid(self, x: Tensor) -> Tensor:
        """(N, 3, o + 184, o + 184) -> (N, C, o, o) for outputs o = 4 + 16 k (rectangles alike)."""
        height, width = x.shape[-2], x.shape[-1]
        for side in () if tracing() else (height, width):  # traced: sizes are tensors, made valid by forward
            out = side - 2 * VALID_CONTEXT
            if out < VALID_PHASE or (out - VALID_PHASE) % VALID_STEP:
                raise FcnsegError(
                    f"unet-valid takes inputs of 188 + 16k pixels (572 for 388 out), not {height}x{width}; "
                    "call the model itself (mirror-extends any size) or fcnseg.inference.overlap_tile"
                )
        return self.scores(x)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2], x.shape[-1]
        c = VALID_CONTEXT
        extra_h, extra_w = valid_output_size(height) - height, valid_output_size(width) - width
        return self.forward_valid(mirror_pad(x, c, c + extra_h, c, c + extra_w))[:, :, :height, :width]


def _refuse_backbone_weights(weights: WeightsSource | None) -> None:
    if weights is not None:
        raise FcnsegError(
            f"unet has no pretrained backbone; drop backbone_weights ({weights!r}) "
            "or use --init-from for a U-Net checkpoint"
        )


def _build_unet(
    num_classes: int, backbone: str, geometry: str, width: float, weights: WeightsSource | None, batch_norm: bool = True
) -> UNet:
    _refuse_backbone_weights(weights)
    return UNet(num_classes, width, batch_norm)


def _build_unet_valid(
    num_classes: int, backbone: str, geometry: str, width: float, weights: WeightsSource | None, batch_norm: bool = True
) -> UNetValid:
    _refuse_backbone_weights(weights)
    return UNetValid(num_classes, width, batch_norm)


register_model(
    "unet",
    ModelEntry(
        _build_unet,
        ("unet",),
        ("same",),
        "U-Net: skip features concatenated, padded convs",
        takes_backbone_weights=False,
    ),
)
register_model(
    "unet-valid",
    ModelEntry(
        _build_unet_valid,
        ("unet",),
        ("valid",),
        "U-Net as published: unpadded convs (572 -> 388), cropped skips, mirrored borders",
        takes_backbone_weights=False,
    ),
)
