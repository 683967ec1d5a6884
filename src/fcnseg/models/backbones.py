"""Classification trunks made fully convolutional: VGG16, VGG16-BN and AlexNet, with torchvision's key names,
and CaffeNet (Caffe's two-tower AlexNet, the trunk of the reference FCN-AlexNet).

A trunk is ``features`` (convolutions, ReLUs and poolings at torchvision's indices) followed by
``classifier`` whose fully connected layers are convolutions: fc6 takes the whole pool5 window
(7x7 for VGG16, 6x6 for AlexNet), fc7 (and the optional fc8) are 1x1. The state-dict keys are
torchvision's (``features.0.weight``, ``classifier.0.weight``, ...); only the classifier weights
have a different shape, which fcnseg.models.surgery reshapes when loading torchvision files.
``vgg16_bn`` puts a BatchNorm after every convolution of ``features`` (conv, bn, relu: torchvision's
indices, so its ``vgg16_bn`` ImageNet file loads unchanged); its classifier has no BatchNorm.
BatchNorm is the identity for coordinate mapping, so crops are derived exactly as for VGG16.

Trunk geometries (how every layer is padded):
    "caffe"  the FCN reference: the first convolution is padded by 100 pixels and pooling rounds up
             (ceil mode), so any input, even 1x1, yields at least one fc7 cell; the FCN head then
             crops the upsampled scores back to the input.
    "same"   every layer is padded to keep ceil(size / stride) cells, so cells line up with input
             pixels without the large pad. Pools whose kernel equals their stride (VGG16's 2x2) round
             up (ceil mode): a partial block at the bottom/right edge is pooled over the pixels it
             has, so VGG16 needs no input padding. Other strided layers (AlexNet's 11x11/4 conv and
             3x3/2 pools) only give ceil(size / stride) cells on exact multiples, so the input is
             padded to a multiple of their combined stride (``input_multiple``; 32 for AlexNet).
             About 40% fewer FLOPs than "caffe" for VGG16 at 500x500 (ratio 0.597).
    "valid"  torchvision's classifier geometry (fc6 unpadded, floor pooling): on a 224x224 input
             VGG16 gives one cell equal to the torchvision classifier's logits. Used for checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from fcnseg.models.layers import BatchNorm2d, Dropout, LocalResponseNorm, SameConv2d, scaled


@dataclass(frozen=True)
class TrunkGeometry:
    """How a trunk pads its layers (see the module docstring)."""

    first_padding: int | None  # padding of the first convolution; None = the usual one
    ceil_mode: bool  # for every pool ("same" instead rounds up exactly the kernel == stride pools)
    same: bool  # pad each layer by (kernel - stride + 1) // 2 and the input as described above


TRUNK_GEOMETRIES = {
    "caffe": TrunkGeometry(first_padding=100, ceil_mode=True, same=False),
    "same": TrunkGeometry(first_padding=None, ceil_mode=False, same=True),
    "valid": TrunkGeometry(first_padding=None, ceil_mode=False, same=False),
}


@dataclass(frozen=True)
class Conv:
    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1  # Caffe's two-tower AlexNet splits some convolutions into 2 groups


@dataclass(frozen=True)
class LRN:
    """Caffe's cross-channel local response normalisation (k = 1)."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    stride = 1  # not a field: it moves no cell


@dataclass(frozen=True)
class Pool:
    kernel: int
    stride: int


def _same_padding(kernel: int, stride: int) -> int:
    return (kernel - stride + 1) // 2


def _same_input_multiple(features: list) -> int:
    """What "same" pads inputs to a multiple of: the combined stride of the layers up to the last
    strided layer that is not a kernel == stride pool (those round up by themselves); 1 if none."""
    multiple = stride = 1
    for spec in features:
        stride *= spec.stride
        if spec.stride > 1 and not (isinstance(spec, Pool) and spec.kernel == spec.stride):
            multiple = stride
    return multiple


class ClassifierTrunk(nn.Module):
    """A classification net as a fully convolutional trunk (torchvision layout; see module docstring).

    Taps: "pool1".."poolN" (outputs of the pooling layers, in order) and "fc7" (the classifier
    output before fc8). ``forward`` returns fc8 scores if ``num_classes`` was given, else fc7.
    ``odd_upsampler``: an FCN on this trunk upsamples by a 2*factor - 1 kernel (CaffeNet: 63x63).
    """

    odd_upsampler = False

    def __init__(
        self,
        name: str,
        features: list,
        fc6_kernel: int,
        dropout_first: bool,
        width: float,
        geometry: str,
        num_classes: int | None = None,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        geo = TRUNK_GEOMETRIES[geometry]
        self.name = name
        self.geometry = geometry
        self.feature_taps: dict[str, int] = {}
        self.channels: dict[str, int] = {}
        layers: list[nn.Module] = []
        in_channels = 3
        multiple = max(getattr(spec, "groups", 1) for spec in features)  # grouped convs split evenly
        for spec in features:
            if isinstance(spec, LRN):
                layers.append(LocalResponseNorm(spec.size, spec.alpha, spec.beta, k=1.0))
            elif isinstance(spec, Conv):
                padding = _same_padding(spec.kernel, spec.stride) if geo.same else spec.padding
                if not layers and geo.first_padding is not None:
                    padding = geo.first_padding
                out_channels = -(-scaled(spec.channels, width) // multiple) * multiple
                layers.append(
                    nn.Conv2d(in_channels, out_channels, spec.kernel, spec.stride, padding, groups=spec.groups)
                )
                if batch_norm:
                    layers.append(BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
            else:
                padding = _same_padding(spec.kernel, spec.stride) if geo.same else 0
                ceil_mode = spec.kernel == spec.stride if geo.same else geo.ceil_mode
                layers.append(nn.MaxPool2d(spec.kernel, spec.stride, padding, ceil_mode=ceil_mode))
                name = f"pool{len(self.feature_taps) + 1}"
                self.feature_taps[name] = len(layers) - 1
                self.channels[name] = in_channels
        self.features = nn.Sequential(*layers)

        hidden = scaled(4096, width)
        if geo.same and fc6_kernel % 2:  # pool5 may be smaller than fc6's reach (3x3 for 96x96 images)
            fc6 = SameConv2d(in_channels, hidden, fc6_kernel, padding=fc6_kernel // 2)
        else:
            fc6 = nn.Conv2d(in_channels, hidden, fc6_kernel, padding=fc6_kernel // 2 if geo.same else 0)
        fc7 = nn.Conv2d(hidden, hidden, 1)
        # torchvision: VGG is [fc6, relu, drop, fc7, relu, drop, fc8], AlexNet [drop, fc6, relu, drop,
        # fc7, relu, fc8]; keeping the indices keeps the state-dict keys.
        if dropout_first:
            head = [Dropout(), fc6, nn.ReLU(inplace=True), Dropout(), fc7, nn.ReLU(inplace=True)]
        else:
            head = [fc6, nn.ReLU(inplace=True), Dropout(), fc7, nn.ReLU(inplace=True), Dropout()]
        if num_classes is not None:
            head.append(nn.Conv2d(hidden, num_classes, 1))
        self.classifier = nn.Sequential(*head)
        self.channels["fc7"] = hidden
        self.output_stride = 1
        for spec in features:
            self.output_stride *= spec.stride
        self.input_multiple = _same_input_multiple(features) if geo.same else 1
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation: He for convolutions, N(0, 0.01) for the fc layers."""
        if self.features[0].weight.is_meta:
            return  # shapes only (built on the meta device, e.g. by `fcnseg models`): nothing to draw
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for module in self.classifier:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def layers_to(self, tap: str) -> list[nn.Module]:
        """The layers from the input to ``tap``, in order (for coordinate mapping)."""
        if tap == "fc7":
            return [*self.features, *self.classifier[:6]]
        return list(self.features[: self.feature_taps[tap] + 1])

    def forward_taps(self, x: Tensor, taps: tuple[str, ...]) -> dict[str, Tensor]:
        """Run the trunk up to fc7 and return the requested intermediate maps by name."""
        wanted = {self.feature_taps[name]: name for name in taps if name != "fc7"}
        out: dict[str, Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                out[wanted[index]] = x
        out["fc7"] = self.classifier[:6](x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


VGG16_FEATURES = [
    Conv(64, 3, 1, 1),
    Conv(64, 3, 1, 1),
    Pool(2, 2),
    Conv(128, 3, 1, 1),
    Conv(128, 3, 1, 1),
    Pool(2, 2),
    Conv(256, 3, 1, 1),
    Conv(256, 3, 1, 1),
    Conv(256, 3, 1, 1),
    Pool(2, 2),
    Conv(512, 3, 1, 1),
    Conv(512, 3, 1, 1),
    Conv(512, 3, 1, 1),
    Pool(2, 2),
    Conv(512, 3, 1, 1),
    Conv(512, 3, 1, 1),
    Conv(512, 3, 1, 1),
    Pool(2, 2),
]

ALEXNET_FEATURES = [
    Conv(64, 11, 4, 2),
    Pool(3, 2),
    Conv(192, 5, 1, 2),
    Pool(3, 2),
    Conv(384, 3, 1, 1),
    Conv(256, 3, 1, 1),
    Conv(256, 3, 1, 1),
    Pool(3, 2),
]

# The reference voc-fcn-alexnet/net.py trunk, layer for layer Caffe's bvlc_reference_caffenet: LRN
# after each of the first two pools (bvlc_alexnet puts it before), conv2/4/5 in 2 groups.
CAFFENET_FEATURES = [
    Conv(96, 11, 4, 0),
    Pool(3, 2),
    LRN(),
    Conv(256, 5, 1, 2, groups=2),
    Pool(3, 2),
    LRN(),
    Conv(384, 3, 1, 1),
    Conv(384, 3, 1, 1, groups=2),
    Conv(256, 3, 1, 1, groups=2),
    Pool(3, 2),
]


def vgg16(width: float = 1.0, geometry: str = "valid", num_classes: int | None = None) -> ClassifierTrunk:
    """VGG16 (configuration D) as a convolutional trunk; keys as torchvision's ``vgg16``."""
    return ClassifierTrunk("vgg16", VGG16_FEATURES, 7, False, width, geometry, num_classes)


def alexnet(width: float = 1.0, geometry: str = "valid", num_classes: int | None = None) -> ClassifierTrunk:
    """AlexNet (torchvision's single-tower variant) as a convolutional trunk; keys as torchvision's."""
    return ClassifierTrunk("alexnet", ALEXNET_FEATURES, 6, True, width, geometry, num_classes)


def caffenet(width: float = 1.0, geometry: str = "valid", num_classes: int | None = None) -> ClassifierTrunk:
    """Caffe's two-tower AlexNet (grouped convolutions, LRN), the reference FCN-AlexNet's trunk.

    Keys follow the layer order (``features.0`` conv1, ``features.3`` norm1, ``features.4`` conv2, ...;
    ``classifier.0/3`` fc6/fc7); weights come from the FCN-AlexNet caffemodel (fcn-alexnet-voc).
    """
    trunk = ClassifierTrunk("caffenet", CAFFENET_FEATURES, 6, False, width, geometry, num_classes)
    trunk.odd_upsampler = True
    return trunk


def vgg16_bn(width: float = 1.0, geometry: str = "valid", num_classes: int | None = None) -> ClassifierTrunk:
    """VGG16 with BatchNorm after every convolution; keys as torchvision's ``vgg16_bn``."""
    return ClassifierTrunk("vgg16_bn", VGG16_FEATURES, 7, False, width, geometry, num_classes, batch_norm=True)


TRUNKS = {"vgg16": vgg16, "vgg16_bn": vgg16_bn, "alexnet": alexnet}
TRUNKS["caffenet"] = caffenet

# What a weights file for each trunk must look like (for error messages).
EXPECTED_FILES = {
    "vgg16": "a torchvision vgg16 state dict (features.{0..28}.*, classifier.{0,3,6}.*, e.g. "
    "vgg16-397923af.pth) and width=1",
    "vgg16_bn": "a torchvision vgg16_bn state dict (features.{0..42}.*, BatchNorm at features.{1,4,...}, "
    "classifier.{0,3,6}.*, e.g. vgg16_bn-6c64b313.pth) and width=1",
    "alexnet": "a torchvision alexnet state dict (features.{0,3,6,8,10}.*, classifier.{1,4,6}.*, e.g. "
    "alexnet-owt-7be5be79.pth) and width=1",
}
EXPECTED_FILES["caffenet"] = (
    "no torchvision file (torchvision's alexnet is the single-tower net); load "
    "the reference FCN-AlexNet with weights='fcn-alexnet-voc' or its caffemodel"
)
