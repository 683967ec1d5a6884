"""fc -> conv surgery, torchvision weight files, bad files, staged initialisation."""

import pytest
import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.models import create_model, load_matching
from fcnseg.models.backbones import vgg16
from fcnseg.models.layers import scaled
from fcnseg.models.surgery import load_trunk_weights

TINY = 1 / 16
VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's vgg16 feature indices
VGG_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def torchvision_vgg16(width: float) -> nn.Module:
    """An independent reference: torchvision's VGG16 layout with Linear classifier layers."""
    layers, in_c = [], 3
    for i, out in enumerate(VGG_CHANNELS):
        out = scaled(out, width)
        layers += [nn.Conv2d(in_c, out, 3, padding=1), nn.ReLU()]
        in_c = out
        if i in (1, 3, 6, 9, 12):
            layers.append(nn.MaxPool2d(2, 2))
    hidden = scaled(4096, width)
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d(7)
    model.classifier = nn.Sequential(
        nn.Linear(in_c * 49, hidden),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(hidden, 1000),
    )
    model.forward = lambda x: model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))
    for layer in model.modules():  # He init, so the input still matters after 16 layers
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.normal_(layer.bias, std=0.01)
    return model.eval()


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(1)
    return torchvision_vgg16(TINY)


def test_fake_file_has_torchvision_keys(reference):
    keys = {k.rsplit(".", 1)[0] for k in reference.state_dict()}
    assert keys == {f"features.{i}" for i in VGG_CONVS} | {"classifier.0", "classifier.3", "classifier.6"}


def test_convolutionalised_trunk_reproduces_classifier_logits(reference):
    trunk = vgg16(width=TINY, geometry="valid", num_classes=1000).eval()
    load_trunk_weights(trunk, reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = reference(x)
        dense = trunk(x)
    assert dense.shape == (2, 1000, 1, 1)
    assert torch.allclose(dense[:, :, 0, 0], logits, rtol=1e-4, atol=1e-5 * logits.abs().max().item())


def test_output_cell_equals_classifier_on_its_window(reference):
    # The classifier zero-pads every 3x3 convolution at its 224x224 window's border, where the dense
    # net sees the neighbouring pixels instead; keeping only the kernels' centre taps removes that
    # (legitimate) difference, so what is checked is exactly the geometry: window position, pooling
    # alignment and the fc6 reshape.
    pointwise = torchvision_vgg16(TINY)
    pointwise.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for layer in pointwise.features:
            if isinstance(layer, nn.Conv2d):
                centre = layer.weight[:, :, 1, 1].clone()
                layer.weight.zero_()
                layer.weight[:, :, 1, 1] = 3 * centre  # keep the activations' scale
    trunk = vgg16(width=TINY, geometry="valid", num_classes=1000).eval()
    load_trunk_weights(trunk, pointwise.state_dict())
    x = torch.randn(1, 3, 256, 288)
    with torch.no_grad():
        dense = trunk(x)
        assert dense.shape == (1, 1000, 2, 3)  # (256 - 224) / 32 + 1, (288 - 224) / 32 + 1
        for i, j in [(0, 0), (1, 2), (0, 1)]:
            logits = pointwise(x[:, :, 32 * i : 32 * i + 224, 32 * j : 32 * j + 224])
            assert torch.allclose(dense[:, :, i, j], logits, rtol=1e-4, atol=1e-5 * logits.abs().max().item())
        # A window one pixel off gives other logits: the check can tell positions apart.
        shifted = pointwise(x[:, :, 33:257, 32:256])
        assert not torch.allclose(dense[:, :, 1, 1], shifted, rtol=1e-3)


def test_fcn_loads_torchvision_file_unchanged(reference, tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("fcn8s", 4, width=TINY, backbone_weights=str(path))
    own = model.backbone.state_dict()
    assert torch.equal(own["features.28.weight"], reference.state_dict()["features.28.weight"])
    assert torch.equal(own["classifier.0.weight"], reference.state_dict()["classifier.0.weight"].view(-1, 32, 7, 7))
    assert torch.equal(own["classifier.3.weight"][:, :, 0, 0], reference.state_dict()["classifier.3.weight"])
    assert model.score_fr.weight.abs().sum() == 0  # fc8 discarded, score layer zero as in the reference


def test_features_only_file_warns_that_fc_layers_start_fresh(reference, tmp_path, caplog):
    path = tmp_path / "features.pth"
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("features.")}, path)
    with caplog.at_level("WARNING", logger="fcnseg"):
        model = create_model("fcn32s", 4, width=TINY, backbone_weights=path)
    assert any("fc6/fc7 start fresh" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert torch.equal(model.backbone.features[0].weight, reference.features[0].weight)


@pytest.mark.parametrize(
    "change, words",
    [
        (
            lambda sd: {**sd, "features.0.weight": torch.zeros(64, 3, 3, 3)},
            "features.0.weight has shape 64x3x3x3, expected 4x3x3x3",
        ),
        (lambda sd: {k: v for k, v in sd.items() if k != "features.10.bias"}, "lacks features.10.bias"),
        (lambda sd: {**sd, "layer1.0.conv1.weight": torch.zeros(1)}, "unexpected keys \\(layer1.0.conv1.weight"),
        (
            lambda sd: {k: v for k, v in sd.items() if not k.startswith("classifier.3")},
            "only some of the fully connected",
        ),
    ],
)
def test_wrong_weights_file_names_file_and_expectation(reference, tmp_path, change, words):
    path = tmp_path / "bad.pth"
    torch.save(change(dict(reference.state_dict())), path)
    with pytest.raises(FcnsegError, match=words) as info:
        create_model("fcn32s", 4, width=TINY, backbone_weights=path)
    assert str(path) in str(info.value) and "torchvision vgg16" in str(info.value)


def test_corrupt_or_foreign_weights_file(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(FcnsegError, match="corrupt.pth"):
        create_model("fcn32s", 4, width=TINY, backbone_weights=corrupt)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(FcnsegError, match="list.pth is not a state dict"):
        create_model("fcn32s", 4, width=TINY, backbone_weights=listing)
    with pytest.raises(FcnsegError, match="does not exist"):
        create_model("fcn32s", 4, width=TINY, backbone_weights=tmp_path / "missing.pth")


def test_full_size_vgg16_keys_and_shapes_match_torchvision():
    # torchvision's vgg16-397923af.pth: 13 convolutions, fc6 4096x25088, fc7 4096x4096, fc8 1000x4096.
    expected = {}
    in_c = 3
    for i, out in zip(VGG_CONVS, VGG_CHANNELS):
        expected[f"features.{i}.weight"], expected[f"features.{i}.bias"] = (out, in_c, 3, 3), (out,)
        in_c = out
    for i, (out, inp) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        expected[f"classifier.{i}.weight"], expected[f"classifier.{i}.bias"] = (out, inp), (out,)
    with torch.device("meta"):
        trunk = vgg16(width=1.0, geometry="caffe", num_classes=1000)
    own = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
    assert own.keys() == expected.keys()
    for key, shape in expected.items():
        assert torch.Size(own[key]).numel() == torch.Size(shape).numel(), key
        assert own[key] == shape or len(shape) == 2 and own[key][:2] == shape[:1] + own[key][1:2], key


@pytest.mark.slow
def test_full_size_torchvision_state_dict_loads():
    """The 528 MB layout of vgg16-397923af.pth (exact names and shapes) loads into FCN-8s."""
    state = {}
    in_c = 3
    for i, out in zip(VGG_CONVS, VGG_CHANNELS):
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.empty(out, in_c, 3, 3), torch.zeros(out)
        in_c = out
    for i, (out, inp) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        state[f"classifier.{i}.weight"], state[f"classifier.{i}.bias"] = torch.empty(out, inp), torch.full((out,), 0.5)
    model = create_model("fcn8s", 21, backbone_weights=state)
    assert model.backbone.classifier[0].weight.shape == (4096, 512, 7, 7)
    assert torch.all(model.backbone.classifier[3].bias == 0.5)


def randomised(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.normal_()
    return model


def test_staged_initialisation_32s_to_16s_to_8s(tmp_path):
    fcn32 = randomised(create_model("fcn32s", 3, width=TINY))
    fcn16 = create_model("fcn16s", 3, width=TINY)
    loaded, skipped = load_matching(fcn16, fcn32.state_dict())
    assert skipped == ["upscore32.weight"]
    assert set(loaded) == set(fcn32.state_dict()) - {"upscore32.weight"}
    assert torch.equal(fcn16.score_fr.weight, fcn32.score_fr.weight)
    assert torch.equal(fcn16.backbone.classifier[3].weight, fcn32.backbone.classifier[3].weight)
    assert fcn16.score_pool4.weight.abs().sum() == 0  # new layer keeps its reference init

    randomised(fcn16)
    path = tmp_path / "fcn16s.pth"
    torch.save(fcn16.state_dict(), path)
    fcn8 = create_model("fcn8s", 3, width=TINY)
    loaded, skipped = load_matching(fcn8, path)
    assert skipped == ["upscore16.weight"]
    assert {"score_pool4.weight", "upscore2.weight", "backbone.features.0.weight"} <= set(loaded)
    assert torch.equal(fcn8.upscore2.weight, fcn16.upscore2.weight)
    assert torch.equal(fcn8.score_pool4.bias, fcn16.score_pool4.bias)
