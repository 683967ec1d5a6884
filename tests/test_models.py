"""FCN family: registry, geometry (computed crops), shapes, initialisation, autocast/channels_last."""

import pytest
import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.models import BilinearUpsample, bilinear_kernel, create_model, list_models
from fcnseg.models.backbones import vgg16
from fcnseg.models.geometry import CoordMap, compose, crop_offset

TINY = 1 / 16
FCN_NAMES = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"]


def randomise_scores(model: nn.Module) -> nn.Module:
    """Score layers start at zero (reference init); give them weights so outputs carry information."""
    for name, module in model.named_modules():
        if name.startswith("score_"):
            nn.init.normal_(module.weight, std=0.5)
    return model


def test_list_models_has_the_paper_variants():
    assert {"fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"} <= set(list_models())


def test_caffe_crop_offsets_are_the_reference_values():
    # Reference (Caffe voc-fcn*s, pytorch-fcn): upscore crop 19 (32s), 27 (16s), 31 (8s);
    # score_pool4 cropped by 5, score_pool3 by 9.
    expected = {
        "fcn32s": {"upscore32": 19},
        "fcn16s": {"score_pool4": 5, "upscore16": 27},
        "fcn8s": {"score_pool4": 5, "score_pool3": 9, "upscore8": 31},
        "fcn8s-atonce": {"score_pool4": 5, "score_pool3": 9, "upscore8": 31},
    }
    for name, offsets in expected.items():
        assert create_model(name, 3, width=TINY).crop_offsets() == offsets


def test_coordinate_mapping_by_hand():
    # conv 3x3 pad 100 -> cell 0 at pixel -99; 2x2 pool: start + 0.5, stride 2; 3x3 conv pad 0: + 2.
    layers = [nn.Conv2d(1, 1, 3, padding=100), nn.MaxPool2d(2, 2), nn.Conv2d(1, 1, 3)]
    cmap = compose(layers)
    assert (cmap.stride, cmap.start) == (2, -99 + 0.5 + 2)
    up = BilinearUpsample(1, 2, learnable=False)  # kernel 4, stride 2: start - 1.5 * old stride / 2
    assert cmap.then(up) == CoordMap(1, -96.5 - 1.5)
    assert crop_offset(cmap.then(up), CoordMap()) == 98


def test_same_geometry_crops_come_from_the_same_rule():
    # No 100-pixel pad: the upsamplers overhang the skip maps by one cell (negative offset).
    model = create_model("fcn8s", 3, geometry="same", width=TINY)
    assert model.crop_offsets() == {"score_pool4": -1, "score_pool3": -1, "upscore8": 4}


@pytest.mark.parametrize("name", FCN_NAMES)
@pytest.mark.parametrize("geometry", ["caffe", "same"])
def test_any_input_size_gives_scores_at_input_size(name, geometry):
    model = randomise_scores(create_model(name, 4, geometry=geometry, width=TINY)).eval()
    with torch.no_grad():
        for size in [(1, 1), (1, 37), (31, 33), (64, 64), (65, 97)]:
            out = model(torch.randn(2, 3, *size))
            assert out.shape == (2, 4, *size)
            assert torch.isfinite(out).all()


def test_alexnet_fcn32s():
    model = randomise_scores(create_model("fcn32s", 3, backbone="alexnet", width=TINY)).eval()
    assert model.output_stride == 32
    assert model.crop_offsets() == {"upscore32": 18}  # 18.5 (fc6 has an even 6x6 kernel) floored
    with torch.no_grad():
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)
        assert model(torch.randn(1, 3, 50, 71)).shape == (1, 3, 50, 71)


def test_reference_initialisation():
    model = create_model("fcn8s", 5, width=TINY)
    for name in ["score_fr", "score_pool4", "score_pool3"]:
        layer = getattr(model, name)
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    # 2x upsamplers learned, final fixed (a buffer, not a parameter) by default.
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert "upscore2.weight" in params and "upscore_pool4.weight" in params
    assert "upscore8.weight" in buffers and "upscore8.weight" not in params
    fixed = create_model("fcn8s", 5, width=TINY, learn_skip_upsample=False, learn_final_upsample=True)
    assert "upscore2.weight" not in dict(fixed.named_parameters())
    assert "upscore8.weight" in dict(fixed.named_parameters())
    # Diagonal bilinear filters: class c upsamples into class c only.
    weight = model.upscore8.weight
    assert torch.equal(weight[1, 1], bilinear_kernel(16)) and weight[1, 2].abs().sum() == 0
    # Same keys whether learned or fixed, so checkpoints move between the two.
    assert model.state_dict().keys() == fixed.state_dict().keys()
    assert model.backbone.classifier[0].weight.std() > 0  # fc6 random until weights are loaded


def test_bilinear_kernel_values_and_interpolation():
    assert torch.allclose(bilinear_kernel(4)[0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    assert torch.allclose(bilinear_kernel(3)[1], torch.tensor([0.5, 1.0, 0.5]))
    # Upsampling a linear ramp by 4 gives a linear ramp (away from the borders).
    up = BilinearUpsample(1, 4, learnable=False)
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6)
    out = up(ramp)[0, 0, 8, 4:20]
    assert torch.allclose(out.diff(), torch.full((15,), 0.25))


def test_atonce_scales_pool_features_before_scoring():
    model = create_model("fcn8s-atonce", 2, width=TINY).eval()
    seen = {}
    model.score_pool4.register_forward_hook(lambda m, i, o: seen.__setitem__("pool4", i[0]))
    model.score_pool3.register_forward_hook(lambda m, i, o: seen.__setitem__("pool3", i[0]))
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        model(x)
        taps = model.backbone.forward_taps(x, ("pool3", "pool4"))
    assert torch.allclose(seen["pool4"], taps["pool4"] * 0.01)
    assert torch.allclose(seen["pool3"], taps["pool3"] * 1e-4)


def test_width_scales_channels_and_output_stride():
    trunk = vgg16(width=0.25, geometry="caffe")
    assert trunk.features[0].out_channels == 16 and trunk.channels["fc7"] == 1024
    assert trunk.output_stride == 32
    assert create_model("fcn8s", 2, width=TINY).output_stride == 32


def test_autocast_bfloat16_and_channels_last():
    model = randomise_scores(create_model("fcn8s", 3, geometry="same", width=TINY)).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 45, 61).to(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(x)
    assert fast.shape == reference.shape == (1, 3, 45, 61)
    assert torch.allclose(fast.float(), reference, atol=0.05 * reference.abs().max().item() + 1e-3)


def test_training_step_reaches_every_learned_layer():
    model = create_model("fcn16s", 3, width=TINY)
    model(torch.randn(1, 3, 40, 40)).sum().backward()
    assert model.score_fr.weight.grad.abs().sum() > 0
    assert model.score_pool4.weight.grad.abs().sum() > 0
    assert model.backbone.features[0].weight.grad is not None


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"name": "fcn7s"}, "unknown model 'fcn7s'"),
        ({"name": "fcn8s", "backbone": "alexnet"}, "no backbone 'alexnet'"),
        ({"name": "fcn8s", "geometry": "valid"}, "no geometry 'valid'"),
        ({"name": "fcn8s", "learn_everything": True}, "no option 'learn_everything'"),
        ({"name": "fcn8s", "width": 0}, "width"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, words):
    with pytest.raises(FcnsegError, match=words):
        create_model(num_classes=3, **kwargs)


def pointwise_positive(model: nn.Module) -> nn.Module:
    """Every convolution keeps only its centre tap, set positive; biases zero. A bright pixel then
    lights exactly the fc7 cell whose pooling block holds it, and the output is the final
    upsampler's bilinear bump centred on that cell."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                k = layer.weight.shape[-1]
                layer.weight.zero_()
                layer.weight[:, :, k // 2, k // 2] = 1.0 / layer.weight.shape[1]
                layer.bias.zero_()
    return model


@pytest.mark.parametrize("geometry, first_pixel", [("same", 0), ("caffe", -99)])
@pytest.mark.parametrize(
    "name, kept_score, stride", [("fcn32s", "score_fr", 32), ("fcn16s", "score_pool4", 16), ("fcn8s", "score_pool3", 8)]
)
def test_output_is_aligned_to_the_input(geometry, first_pixel, name, kept_score, stride):
    # Pooling blocks of `stride` pixels start at pixel 0 ("same") or -99 ("caffe": conv1_1's
    # 100-pixel pad, less its 1-pixel reach). With only one score layer active, the output is a
    # bilinear bump centred on the block holding the bright pixel, whatever crops lie between.
    model = pointwise_positive(create_model(name, 1, geometry=geometry, width=TINY)).eval()
    with torch.no_grad():
        for scorer in ["score_fr", "score_pool4", "score_pool3"]:
            if hasattr(model, scorer) and scorer != kept_score:
                getattr(model, scorer).weight.zero_()
    x = torch.zeros(1, 3, 96, 96)
    x[:, :, 50, 70] = 1.0
    with torch.no_grad():
        out = model(x)[0, 0]
    for profile, pixel in [(out.max(dim=1).values, 50), (out.max(dim=0).values, 70)]:
        block_start = first_pixel + stride * ((pixel - first_pixel) // stride)
        left, right = block_start + stride // 2 - 1, block_start + stride // 2  # the two middle pixels
        assert profile.max() > 0
        assert profile[left] == profile[right] == profile.max()
        for d in range(1, stride // 2):  # symmetric bump around the block centre
            assert torch.isclose(profile[left - d], profile[right + d])


@pytest.mark.parametrize("name", ["fcn32s", "fcn8s", "fcn-resnet50", "unet"])
def test_every_model_runs_in_bfloat16_channels_last(name):
    model = randomise_scores(create_model(name, 3, geometry=None, width=TINY)).eval()
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 35, 50).to(memory_format=torch.channels_last))
    assert out.shape == (1, 3, 35, 50) and torch.isfinite(out.float()).all()


def test_same_geometry_needs_no_input_padding_and_covers_the_edge_blocks():
    # VGG16 "same" pools in ceil mode instead of padding the input to a multiple of 32: on a
    # 100x90 image the last row and column blocks are partial (96..99, 64..89), yet full blocks
    # stay aligned and the bright pixel in the bottom-right partial block still lights the corner.
    model = pointwise_positive(create_model("fcn32s", 1, geometry="same", width=TINY)).eval()
    assert model.backbone.input_multiple == 1
    assert create_model("fcn32s", 1, backbone="alexnet", geometry="same", width=TINY).backbone.input_multiple == 32
    x = torch.zeros(1, 3, 100, 90)
    x[:, :, 50, 40] = 1.0  # block rows 32..63, columns 32..63: centre between pixels 47 and 48
    with torch.no_grad():
        out = model(x)[0, 0]
    assert out.shape == (100, 90)
    for profile in [out.max(dim=1).values, out.max(dim=0).values]:
        assert profile[47] == profile[48] == profile.max() > 0
        for d in range(1, 16):
            assert torch.isclose(profile[47 - d], profile[48 + d])
    x.zero_()
    x[:, :, 99, 89] = 1.0
    with torch.no_grad():
        out = model(x)[0, 0]
    rows, cols = out.max(dim=1).values, out.max(dim=0).values
    assert rows[99] == rows.max() > 0 and (rows[96:].diff() > 0).all()  # bump centred past the edge
    assert cols[79] == cols[80] == cols.max()  # column block 64..95 centred at 79.5
