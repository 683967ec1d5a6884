"""AlexNet FCN, dilated-ResNet FCN and U-Net: torchvision layouts, weight import, shapes."""

import pytest
import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.models import create_model
from fcnseg.models.backbones import alexnet, vgg16_bn
from fcnseg.models.layers import scaled
from fcnseg.models.resnet import DEPTHS, DilatedResNet
from fcnseg.models.surgery import load_trunk_weights

TINY = 1 / 16


def torchvision_alexnet(width: float) -> nn.Module:
    """An independent reference in torchvision's AlexNet layout, with Linear classifier layers."""
    c = [scaled(n, width) for n in (64, 192, 384, 256, 256)]
    hidden = scaled(4096, width)
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, c[0], 11, 4, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )
    model.avgpool = nn.AdaptiveAvgPool2d(6)
    model.classifier = nn.Sequential(
        nn.Dropout(),
        nn.Linear(c[4] * 36, hidden),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1000),
    )
    model.forward = lambda x: model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return model.eval()


def test_alexnet_keys_and_classifier_logits():
    reference = torchvision_alexnet(TINY)
    keys = {k.rsplit(".", 1)[0] for k in reference.state_dict()}
    assert keys == {f"features.{i}" for i in (0, 3, 6, 8, 10)} | {f"classifier.{i}" for i in (1, 4, 6)}
    trunk = alexnet(width=TINY, geometry="valid", num_classes=1000).eval()
    load_trunk_weights(trunk, reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, dense = reference(x), trunk(x)
    assert dense.shape == (2, 1000, 1, 1)
    assert torch.allclose(dense[:, :, 0, 0], logits, rtol=1e-4, atol=1e-5 * logits.abs().max().item())
    model = create_model("fcn32s", 5, backbone="alexnet", width=TINY, backbone_weights=reference.state_dict())
    assert torch.equal(model.backbone.features[10].weight, reference.features[10].weight)


def test_alexnet_weights_into_vgg_name_the_expected_file():
    with pytest.raises(FcnsegError, match="unexpected keys \\(features.3.weight.*torchvision vgg16"):
        create_model("fcn32s", 5, width=TINY, backbone_weights=torchvision_alexnet(TINY).state_dict())


@pytest.mark.parametrize("depth, torchvision_params", [("resnet50", 35_322_218), ("resnet101", 54_314_346)])
def test_fcn_resnet_matches_torchvision_layout(depth, torchvision_params):
    with torch.device("meta"):
        model = create_model(f"fcn-{depth}", 21)
    # torchvision's fcn_resnet50/101 (21 classes) counts include an aux classifier on layer3:
    # FCNHead(1024): 3x3 conv 1024->256 + BN(256) + 1x1 conv 256->21 with bias.
    aux = 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21
    assert sum(p.numel() for p in model.parameters()) == torchvision_params - aux
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["backbone.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["backbone.layer3.0.downsample.0.weight"] == (1024, 512, 1, 1)
    assert shapes["classifier.0.weight"] == (512, 2048, 3, 3)
    assert shapes["classifier.1.running_var"] == (512,)
    assert shapes["classifier.4.weight"] == (21, 512, 1, 1)
    layer3_blocks = [k for k in shapes if k.startswith("backbone.layer3.") and k.endswith(".conv1.weight")]
    assert len(layer3_blocks) == DEPTHS[depth][2]
    # Dilated, not strided: layer3 dilation 2 (its first block keeps 1), layer4 dilation 4 (first block 2).
    assert model.backbone.layer3[0].conv2.dilation == (1, 1) and model.backbone.layer3[1].conv2.dilation == (2, 2)
    assert model.backbone.layer4[0].conv2.dilation == (2, 2) and model.backbone.layer4[-1].conv2.dilation == (4, 4)
    assert model.backbone.layer4[0].conv2.stride == (1, 1) and model.output_stride == 8


def test_fcn_resnet_output_stride_and_shapes():
    model = create_model("fcn-resnet50", 4, width=TINY).eval()
    with torch.no_grad():
        assert model.backbone(torch.randn(1, 3, 64, 96)).shape[-2:] == (8, 12)
        for size in [(1, 1), (37, 53)]:
            assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)


def test_fcn_resnet_loads_imagenet_and_segmentation_files(tmp_path):
    source = DilatedResNet(DEPTHS["resnet50"], TINY)
    with torch.no_grad():
        source.layer4[2].bn3.running_mean.normal_()
    imagenet = {**source.state_dict(), "fc.weight": torch.zeros(1000, 128), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet50.pth"
    torch.save(imagenet, path)
    model = create_model("fcn-resnet50", 3, width=TINY, backbone_weights=path)
    assert torch.equal(model.backbone.layer4[2].bn3.running_mean, source.layer4[2].bn3.running_mean)
    segmentation = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    segmentation["aux_classifier.4.weight"] = torch.zeros(21, 16, 1, 1)
    model = create_model("fcn-resnet50", 3, width=TINY, backbone_weights=segmentation)
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    with pytest.raises(FcnsegError, match="lacks layer3.6.conv1.weight.*torchvision resnet101"):
        create_model("fcn-resnet101", 3, width=TINY, backbone_weights=path)


def test_unet_concatenates_skips_and_keeps_input_size():
    model = create_model("unet", 3, width=TINY).eval()
    top = model.decoder[-1]
    assert top.conv[0].in_channels == 2 * top.up.out_channels  # skip features concatenated
    assert model.output_stride == 16
    with torch.no_grad():
        for size in [(1, 1), (17, 45), (64, 64)]:
            assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)
    plain = create_model("unet", 3, width=TINY, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    with pytest.raises(FcnsegError, match="unet has no pretrained backbone"):
        create_model("unet", 3, width=TINY, backbone_weights="x.pth")
    with pytest.raises(FcnsegError, match="no geometry 'caffe'"):
        create_model("unet", 3, geometry="caffe")


# vgg16_bn: torchvision's layout, written out here independently of fcnseg's trunk builder.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def torchvision_vgg16_bn(width: float) -> nn.Module:
    """An independent reference in torchvision's vgg16_bn layout (conv, bn, relu; Linear classifier)."""
    layers, c_in = [], 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            c = scaled(v, width)
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
    hidden = scaled(4096, width)
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    model.classifier = nn.Sequential(
        nn.Linear(c_in * 49, hidden),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(hidden, 1000),
    )
    model.forward = lambda x: model.classifier(torch.flatten(model.features(x), 1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=g)
            if isinstance(layer, nn.BatchNorm2d):  # non-trivial statistics, so a misplaced BN would show
                layer.running_mean.uniform_(-0.1, 0.1, generator=g)
                layer.running_var.uniform_(0.5, 2.0, generator=g)
                layer.weight.uniform_(0.5, 1.5, generator=g)
                layer.bias.uniform_(-0.1, 0.1, generator=g)
    return model.eval()


def test_vgg16_bn_has_torchvision_keys_and_parameter_count():
    convs = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]  # torchvision's vgg16_bn.features indices
    expected = []
    for i in convs:
        expected += [f"features.{i}.weight", f"features.{i}.bias"]
        expected += [
            f"features.{i + 1}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ]
    expected += [f"classifier.{i}.{k}" for i in (0, 3, 6) for k in ("weight", "bias")]
    with torch.device("meta"):
        trunk = vgg16_bn(width=1.0, geometry="valid", num_classes=1000)
        reference = torchvision_vgg16_bn(1.0)
    assert list(trunk.state_dict()) == expected == list(reference.state_dict())
    assert sum(p.numel() for p in trunk.parameters()) == 138_365_992  # torchvision's vgg16_bn
    assert [m.num_features for m in trunk.features if isinstance(m, nn.BatchNorm2d)] == [
        c for c in VGG16_CFG if c != "M"
    ]


def test_vgg16_bn_loads_torchvision_file_and_matches_its_logits():
    reference = torchvision_vgg16_bn(TINY)
    trunk = vgg16_bn(width=TINY, geometry="valid", num_classes=1000).eval()
    load_trunk_weights(trunk, reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, dense = reference(x), trunk(x)
    assert torch.allclose(dense[:, :, 0, 0], logits, rtol=1e-4, atol=1e-5 * logits.abs().max().item())
    model = create_model("fcn8s", 5, backbone="vgg16_bn", width=TINY, backbone_weights=reference.state_dict())
    assert torch.equal(model.backbone.features[41].running_var, reference.features[41].running_var)
    with pytest.raises(FcnsegError, match="torchvision vgg16_bn"):  # a plain vgg16 file is refused by name
        create_model(
            "fcn8s",
            5,
            backbone="vgg16_bn",
            width=TINY,
            backbone_weights=create_model("fcn8s", 5, width=TINY).backbone.state_dict(),
        )


@pytest.mark.parametrize("geometry", ["caffe", "same"])
def test_vgg16_bn_geometry_is_derived_through_the_norm_layers(geometry):
    for name in ("fcn32s", "fcn16s", "fcn8s"):
        plain = create_model(name, 3, geometry=geometry, width=TINY)
        bn = create_model(name, 3, geometry=geometry, width=TINY, backbone="vgg16_bn")
        assert any(isinstance(m, nn.BatchNorm2d) for m in bn.backbone.layers_to("pool3"))
        assert bn.crop_offsets() == plain.crop_offsets()
        bn.eval()
        for size in [(1, 1), (37, 50), (96, 96)]:
            with torch.no_grad():
                assert bn(torch.randn(1, 3, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(1, 1), (3, 3), (2, 5), (4, 9), (12, 12)])
def test_same_conv_skips_dead_taps_with_identical_outputs_and_gradients(size, channels_last):
    """fc6 under the `same` geometry drops the kernel taps that only meet padding (pool5 smaller than
    7x7): outputs and every gradient equal the plain convolution's, on any input size and layout."""
    from fcnseg.models.layers import SameConv2d

    torch.manual_seed(0)
    fast = SameConv2d(4, 6, 7, padding=3)
    plain = nn.Conv2d(4, 6, 7, padding=3)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    fast, plain = fast.double(), plain.double()
    if channels_last:  # the weight keeps its plain memory order (no layout copies of its gradient)
        fast, plain = fast.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        assert fast.weight.is_contiguous() and fast.weight.dtype == torch.float64
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [m(xi) for m, xi in zip((fast, plain), xs)]
    assert outs[0].shape == outs[1].shape == (2, 6, *size)
    torch.testing.assert_close(outs[0], outs[1])
    grad = torch.randn_like(outs[1])
    for out in outs:
        out.backward(grad)
    torch.testing.assert_close(xs[0].grad, xs[1].grad)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad)
    torch.testing.assert_close(fast.bias.grad, plain.bias.grad)
    if size[0] < 4:  # the outer rows of taps were skipped: their gradient is exactly zero
        assert fast.weight.grad[:, :, 0].abs().sum() == 0
    if size[1] < 4:
        assert fast.weight.grad[:, :, :, 0].abs().sum() == 0


def test_same_geometry_fc6_is_a_same_conv_and_traces_the_full_kernel():
    """The demo's trunk uses SameConv2d for fc6; a traced forward keeps the whole 7x7 kernel, so an
    export from a small sample still serves every size."""
    from fcnseg.models.layers import SameConv2d

    trunk = vgg16_bn(width=1 / 16, geometry="same")
    fc6 = trunk.classifier[0]
    assert isinstance(fc6, SameConv2d) and fc6.kernel_size == (7, 7)
    assert not isinstance(vgg16_bn(width=1 / 16, geometry="caffe").classifier[0], SameConv2d)
    traced = torch.jit.trace(fc6.eval(), torch.randn(1, fc6.in_channels, 2, 2))
    big = torch.randn(1, fc6.in_channels, 9, 9)
    torch.testing.assert_close(traced(big), fc6(big))
