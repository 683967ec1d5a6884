"""The CPU fast path: GEMM form of large convolutions, model preparation, agreement with fp32."""

import copy

import pytest
import torch
from torch import nn

from fcnseg import devices
from fcnseg.errors import FcnsegError
from fcnseg.inference import fastpath
from fcnseg.inference.fastpath import GemmConv2d, gemm_large_convs, prepare_model, run_model
from fcnseg.models import create_model


@pytest.mark.parametrize("kernel, padding, rows_per_chunk", [(7, 3, 32), (7, 3, 2), (1, 0, 3), (3, 0, 4)])
def test_gemm_conv_equals_the_convolution(kernel, padding, rows_per_chunk):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel, padding=padding)
    x = torch.randn(2, 8, 11, 13)
    gemm = GemmConv2d(conv, rows_per_chunk=rows_per_chunk)
    with torch.no_grad():
        expected, out = conv(x), gemm(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, expected, atol=1e-5)
    with torch.no_grad():  # inputs that are views (a batch's second image, a crop) or plain NCHW
        second = x.contiguous(memory_format=torch.channels_last)[1:]
        assert torch.allclose(gemm(second), expected[1:], atol=1e-5)
        assert torch.allclose(gemm(x[:, :, 2:9, 1:12]), conv(x[:, :, 2:9, 1:12]), atol=1e-5)
    assert torch.allclose(GemmConv2d(conv).conv_weight(), conv.weight)  # unpacked in the original order


def test_only_plain_convolutions_with_large_weights_are_replaced():
    big = nn.Conv2d(64, 64, 3, padding=1)  # 36864 weights
    assert GemmConv2d.applies_to(big, min_weight=30000)
    assert not GemmConv2d.applies_to(big)  # default threshold: 16M weights (fc6 / fc7 of VGG16)
    for odd in [
        nn.Conv2d(64, 64, 3, stride=2),
        nn.Conv2d(64, 64, 3, groups=2),
        nn.Conv2d(64, 64, 3, dilation=2),
        nn.Conv2d(64, 64, 3, padding=(1, 0)),
        nn.ConvTranspose2d(64, 64, 3),
    ]:
        assert not GemmConv2d.applies_to(odd, min_weight=1)


def test_full_size_vgg_fcn_gets_gemm_fc6_fc7_only():
    with torch.device("meta"):
        model = prepare_model(create_model("fcn8s", 21), True, 21)
    gemms = [name for name, m in model.named_modules() if isinstance(m, GemmConv2d)]
    assert gemms == ["backbone.classifier.0", "backbone.classifier.3"]
    assert model.score_fr.weight.dtype == torch.float32  # score head stays fp32
    assert isinstance(model.backbone.features[0], fastpath.SplitStemConv2d)  # sees the fp32 image
    assert model.backbone.features[2].weight.dtype == torch.bfloat16
    assert model.fast_input_dtype == torch.float32


def randomised(name: str = "fcn8s", geometry: str = "caffe") -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 3, geometry=geometry, width=1 / 16).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("geometry", ["caffe", "same"])
def test_gemm_everywhere_keeps_a_whole_fcn_exact_in_fp32(geometry):
    model = randomised(geometry=geometry)
    packed = copy.deepcopy(model)
    gemm_large_convs(packed.backbone, min_weight=1)
    assert sum(isinstance(m, GemmConv2d) for m in packed.modules()) == 15  # 13 VGG convs + fc6 + fc7
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        assert torch.allclose(packed(x), model(x), atol=1e-4)


def test_fast_path_agrees_with_fp32_and_fp32_path_is_exact():
    model = randomised(geometry="same")
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        reference = model(x)
    slow = prepare_model(copy.deepcopy(model), False, 3)
    gemm_large_convs(slow.backbone, min_weight=1)  # every trunk conv as an fp32 GEMM too
    assert all(p.dtype == torch.float32 for p in slow.parameters())
    assert isinstance(slow.upscore8, fastpath.PerClassUpsample)
    assert sum(isinstance(m, fastpath.ConvReLU) for m in slow.modules()) == 15  # 13 VGG convs, fc6, fc7 + ReLUs
    out = run_model(slow, x, False)
    assert torch.allclose(out, reference, atol=1e-5 * reference.abs().max().item())
    assert torch.equal(out.argmax(1), reference.argmax(1))
    fast = prepare_model(copy.deepcopy(model), True, 3)
    gemm_large_convs(fast.backbone, min_weight=1)  # every other trunk conv as a GEMM, to test them all
    out = run_model(fast, x, True)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert torch.allclose(out, reference, atol=0.05 * reference.abs().max().item())
    assert (out.argmax(1) == reference.argmax(1)).float().mean() > 0.95
    assert sum(isinstance(m, GemmConv2d) for m in fast.modules()) == 14


@pytest.mark.parametrize("name", ["fcn32s", "fcn-resnet50", "unet"])
def test_every_model_takes_the_fp32_image_through_its_stem(name):
    model = create_model(name, 3, width=1 / 16).eval()
    x = torch.randn(1, 3, 37, 52)
    with torch.no_grad():
        reference = model(x)
    fast = prepare_model(copy.deepcopy(model), True, 3)
    out = run_model(fast, x, True)
    assert out.shape == reference.shape and torch.isfinite(out).all()


def test_fast_path_is_off_without_native_bf16(monkeypatch):
    from fcnseg import devices

    monkeypatch.setattr(devices, "cpu_bf16_flags", lambda: ())
    monkeypatch.setattr(fastpath, "cpu_bf16_flags", lambda: ())
    assert not fastpath.fast_path_supported()
    assert "lacks" in fastpath.fast_path_reason()


def test_score_head_keeps_exact_fp32_weights_and_diagonal_upsamplers_go_per_class():
    model = randomised()
    with torch.no_grad():
        model.score_fr.weight.add_(1e-4)  # not representable in bf16: must survive preparation
        model.upscore2.weight.add_(1e-3)  # a learned upsampler that is no longer diagonal
    score_fr, upscore2 = model.score_fr.weight.clone(), model.upscore2.weight.clone()
    fast = prepare_model(copy.deepcopy(model), True, 3)
    assert torch.equal(fast.score_fr.weight, score_fr) and torch.equal(fast.upscore2.weight, upscore2)
    assert isinstance(fast.upscore8, fastpath.PerClassUpsample)  # fixed bilinear: diagonal
    assert isinstance(fast.upscore_pool4, fastpath.PerClassUpsample)  # learned but still bilinear
    assert not isinstance(fast.upscore2, fastpath.PerClassUpsample)
    assert fast.upscore8.weight.dtype == torch.float32
    x = torch.randn(1, 3, 50, 61)
    with torch.no_grad():
        reference = model(x)
    packed = prepare_model(copy.deepcopy(model), False, 3)
    fastpath._per_class_upsamplers(packed)  # exact in fp32
    assert torch.allclose(run_model(packed, x, False), reference, atol=1e-5)


def test_split_stem_is_far_closer_to_fp32_than_a_bf16_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=100)
    x = torch.randn(1, 3, 20, 30) * 2
    stem = fastpath.SplitStemConv2d(conv)
    with torch.no_grad():
        expected = conv(x)
        split = stem(x).float()
        plain = conv.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert split.shape == expected.shape
    rounded = expected.to(torch.bfloat16).float()  # the best any bf16 output can do
    split_error, plain_error = (split - rounded).abs().mean(), (plain - rounded).abs().mean()
    assert split_error < plain_error / 4
    assert (split - expected).abs().max() <= 2**-8 * expected.abs().max()  # output rounding only


@pytest.mark.parametrize("name, kwargs", [("fcn8s", {"geometry": "caffe"}), ("unet", {})])
def test_a_trunk_layer_as_wide_as_the_class_count_is_not_taken_for_the_score_head(name, kwargs):
    # width 1/16: conv1 has 4 channels, like the 4 classes; only the score head stays fp32
    model = create_model(name, num_classes=4, width=1 / 16, **kwargs).eval()
    fast = prepare_model(copy.deepcopy(model), True, 4)
    trunk = next(
        m
        for n, m in fast.named_modules()
        if n.startswith(("backbone.", "encoder.")) and isinstance(m, nn.Conv2d) and m.out_channels == 4
    )
    assert trunk.weight.dtype == torch.bfloat16
    out = run_model(fast, torch.randn(1, 3, 40, 48), True)
    assert out.shape == (1, 4, 40, 48) and out.dtype == torch.float32


@pytest.mark.parametrize(
    "cap, bf16, described",
    [
        ("avx2", False, "AVX2 (no AVX512/VNNI/BF16/AMX)"),
        ("avx512_bf16", True, "AVX2+AVX512+VNNI+BF16 (no AMX)"),
        ("native", True, "AVX2+AVX512+VNNI+BF16+AMX"),
    ],
)
def test_cpu_class_can_be_capped_to_run_a_lesser_cpus_paths(monkeypatch, cap, bf16, described):
    every = frozenset({"fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"})
    monkeypatch.setattr(devices, "_cpuinfo_flags", lambda: every)
    monkeypatch.setenv(fastpath.ISA_ENV, cap)
    assert bool(fastpath.cpu_bf16_flags()) == bf16
    assert fastpath.cpu_isa().startswith(described)
    assert ("avx512f" in fastpath.cpu_flags()) == (cap != "avx2")


def test_unknown_cpu_class_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(fastpath.ISA_ENV, "sse2")
    with pytest.raises(FcnsegError, match="FCNSEG_CPU_ISA='sse2' is not a CPU class; use one of native"):
        fastpath.cpu_flags()


@pytest.mark.parametrize("fast", [False, True])
def test_prepared_model_saves_and_loads_like_the_original(fast):
    model = randomised()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_model(copy.deepcopy(model), fast, 3)
    gemm_large_convs(prepared.backbone, min_weight=1)  # the GEMM rewrite on every trunk conv of this tiny model
    saved = prepared.state_dict()
    assert saved.keys() == original.keys()
    for key, value in original.items():
        assert saved[key].shape == value.shape
        assert torch.allclose(saved[key].float(), value, atol=0.01 * value.abs().max().item() if fast else 0)
    fresh = randomised()
    fresh.load_state_dict(saved)  # a checkpoint written from a prepared model loads into a plain one
    prepared.load_state_dict(original)  # and a prepared model takes the original's weights back
    x = torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        reference = model(x)
    assert torch.allclose(
        run_model(prepared, x, fast), reference, atol=(0.05 if fast else 1e-5) * reference.abs().max().item()
    )


@pytest.mark.parametrize("factor", [2, 8])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (17, 12)])
def test_fixed_bilinear_upsampler_as_a_resize_equals_the_transposed_convolution(factor, size):
    """Exported graphs run fixed bilinear upsamplers as Resize: the same output, edges included."""
    from fcnseg.inference.fastpath import ResizeUpsample
    from fcnseg.models.layers import BilinearUpsample

    upsampler = BilinearUpsample(4, factor, learnable=False)
    assert ResizeUpsample.applies_to(upsampler)
    x = torch.randn(2, 4, *size)
    with torch.no_grad():
        expected, got = upsampler(x), ResizeUpsample(upsampler)(x)
    assert got.shape == expected.shape == (2, 4, (size[0] + 1) * factor, (size[1] + 1) * factor)
    assert torch.allclose(got, expected, atol=1e-6 * expected.abs().max().item())


def test_only_exactly_bilinear_even_upsamplers_become_resizes():
    from fcnseg.inference.fastpath import ResizeUpsample, with_export_upsamplers
    from fcnseg.models.layers import BilinearUpsample

    assert ResizeUpsample.applies_to(BilinearUpsample(3, 2, learnable=True))  # learnable, not yet changed
    trained = BilinearUpsample(3, 2, learnable=True)
    with torch.no_grad():
        trained.weight[0, 0, 1, 1] += 0.01
    assert not ResizeUpsample.applies_to(trained)  # training changed it: a convolution again
    assert not ResizeUpsample.applies_to(BilinearUpsample(3, 32, learnable=False, kernel_size=63))  # FCN-AlexNet
    assert not ResizeUpsample.applies_to(nn.ConvTranspose2d(3, 3, 4, stride=2))
    model = nn.Sequential(BilinearUpsample(3, 8, learnable=False), trained)
    exported = with_export_upsamplers(model)
    assert type(exported[0]) is ResizeUpsample and type(exported[1]) is fastpath.PerClassUpsample
    assert type(model[0]) is BilinearUpsample  # the model itself is left as it was
    x = torch.randn(1, 3, 5, 6)
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-5)
