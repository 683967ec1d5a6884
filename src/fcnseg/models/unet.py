"""U-Net (Ronneberger et al. 2015; shared/seeds/004): the FCN relative that concatenates skip features.

Encoder: five stages of two 3x3 convolutions (64, 128, 256, 512, 1024 channels, times ``width``),
2x2 max pooling between them. Decoder: a 2x2 stride-2 transposed convolution halves the channels,
the encoder map of the same size is concatenated, two 3x3 convolutions follow. A 1x1 convolution
gives the scores. Unlike the original (unpadded convolutions, 572 -> 388 pixels), convolutions are
padded and inputs padded to a multiple of 16, so the output has the input's size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fcnseg.errors import FcnsegError
from fcnseg.models.layers import pad_to_multiple, scaled
from fcnseg.models.registry import ModelEntry, register_model
from fcnseg.models.surgery import WeightsSource

CHANNELS = (64, 128, 256, 512, 1024)


def double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 convolutions with ReLU (and BatchNorm before each ReLU if ``batch_norm``)."""
    layers: list[nn.Module] = []
    for c_in in (in_channels, out_channels):
        layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UpBlock(nn.Module):
    """Upsample 2x (transposed conv), concatenate the skip features, two 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = double_conv(2 * out_channels, out_channels, batch_norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net with padded convolutions: (N, 3, H, W) -> (N, num_classes, H, W) for any H, W."""

    output_stride = 2 ** (len(CHANNELS) - 1)

    def __init__(self, num_classes: int, width: float = 1.0, batch_norm: bool = True) -> None:
        super().__init__()
        channels = [scaled(c, width) for c in CHANNELS]
        self.encoder = nn.ModuleList(
            double_conv(c_in, c_out, batch_norm) for c_in, c_out in zip((3, *channels[:-1]), channels)
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.decoder = nn.ModuleList(
            UpBlock(c_in, c_out, batch_norm) for c_in, c_out in zip(channels[:0:-1], channels[-2::-1])
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2], x.shape[-1]
        x = pad_to_multiple(x, self.output_stride)
        skips = []
        for index, stage in enumerate(self.encoder):
            x = stage(x if index == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        return self.head(x)[:, :, :height, :width]


def _build_unet(
    num_classes: int, backbone: str, geometry: str, width: float, weights: WeightsSource | None, batch_norm: bool = True
) -> UNet:
    if weights is not None:
        raise FcnsegError(
            f"unet has no pretrained backbone; drop backbone_weights ({weights!r}) "
            "or use --init-from for a U-Net checkpoint"
        )
    return UNet(num_classes, width, batch_norm)


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
