"""FCN head on a dilated ResNet-50/101 (output stride 8), laid out like torchvision's fcn_resnet50/101.

Keys: ``backbone.conv1``, ``backbone.bn1``, ``backbone.layer1..4`` (Bottleneck blocks, torchvision
v1.5: the stride sits on the 3x3 convolution) and ``classifier.0..4`` (3x3 conv, BN, ReLU, dropout,
1x1 score conv). layer3 and layer4 replace their stride by dilation 2 and 4, so the last map has
stride 8; the scores are interpolated bilinearly to the input size. ``backbone_weights`` may be an
ImageNet ResNet file (``conv1.*``, ``layer1.*``, ...; ``fc.*`` ignored) or a torchvision
fcn_resnet file (``backbone.*``; its ``classifier``/``aux_classifier`` are ignored).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fcnseg.models.layers import Dropout, scaled
from fcnseg.models.registry import ModelEntry, register_model
from fcnseg.models.surgery import WeightsSource, load_backbone_weights

DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand by 4, plus the shortcut."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class DilatedResNet(nn.Module):
    """ResNet trunk without avgpool/fc; layer3/layer4 dilated instead of strided (output stride 8)."""

    def __init__(self, depths: tuple[int, ...], width: float = 1.0) -> None:
        super().__init__()
        self.inplanes = scaled(64, width)
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(scaled(64, width), depths[0], stride=1, dilate=False)
        self.layer2 = self._make_layer(scaled(128, width), depths[1], stride=2, dilate=False)
        self.layer3 = self._make_layer(scaled(256, width), depths[2], stride=2, dilate=True)
        self.layer4 = self._make_layer(scaled(512, width), depths[3], stride=2, dilate=True)
        self.out_channels = self.inplanes
        if self.conv1.weight.is_meta:
            return  # shapes only (built on the meta device, e.g. by `fcnseg models`): nothing to draw
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        # As torchvision: a dilated layer's first block keeps the previous dilation.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class FCNResNet(nn.Module):
    """Dilated ResNet + FCNHead; scores interpolated bilinearly to the input size (output stride 8)."""

    output_stride = 8

    def __init__(self, backbone: DilatedResNet, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        inner = backbone.out_channels // 4
        self.classifier = nn.Sequential(
            nn.Conv2d(backbone.out_channels, inner, 3, padding=1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            Dropout(dropout),
            nn.Conv2d(inner, num_classes, 1),
        )
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        scores = self.classifier(self.backbone(x))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _resnet_builder(depth: str):
    def build(
        num_classes: int,
        backbone: str,
        geometry: str,
        width: float,
        weights: WeightsSource | None,
        dropout: float = 0.1,
    ) -> FCNResNet:
        trunk = DilatedResNet(DEPTHS[depth], width)
        if weights is not None:
            load_backbone_weights(
                trunk,
                weights,
                what="backbone weights file",
                expected=f"a torchvision {depth} state dict (conv1.*, bn1.*, layer1..4.*) and width=1",
                strip_prefix="backbone.",
                ignore=("fc.", "classifier.", "aux_classifier."),
            )
        return FCNResNet(trunk, num_classes, dropout)

    return build


for _depth in DEPTHS:
    register_model(
        f"fcn-{_depth}",
        ModelEntry(_resnet_builder(_depth), (_depth,), ("same",), f"FCN head on dilated {_depth}, output stride 8"),
    )
