"""The pad-constant cache: the same outputs as the plain forward, computed on less."""

import copy

import pytest
import torch

from fcnseg.inference import fastpath, padcache
from fcnseg.models import create_model


def randomised(name="fcn8s", backbone="vgg16", geometry="caffe", classes=3):
    torch.manual_seed(0)
    model = create_model(name, classes, geometry=geometry, width=1 / 16, backbone=backbone).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.5)
    return model


def pair(model, fast):
    plain = fastpath.prepare_model(copy.deepcopy(model), fast, 3, pad_constants=False)
    cached = fastpath.prepare_model(copy.deepcopy(model), fast, 3)
    return plain, cached


def plans(model):
    return model.backbone.forward_taps.__self__.plans


@pytest.mark.parametrize("name, backbone", [("fcn8s", "vgg16"), ("fcn32s", "alexnet")])
def test_fp32_equals_the_plain_forward_at_several_sizes(name, backbone):
    plain, cached = pair(randomised(name, backbone), fast=False)
    assert padcache.PadConstantTrunk.applies_to(cached.backbone)
    assert any(isinstance(m, fastpath.ConvReLU) for m in cached.backbone.features)  # the fp32 path's fused layers
    for size in [(1, 1), (5, 7), (31, 64), (50, 37)]:
        x = torch.randn(2, 3, *size)
        expected = fastpath.run_model(plain, x, False)
        for _ in range(2):  # the first call builds the cache, the second uses it
            out = fastpath.run_model(cached, x, False)
            assert out.shape == expected.shape
            assert torch.allclose(out, expected, atol=1e-5 * expected.abs().max().item())
    assert plans(cached) and all(plan is not None for plan in plans(cached).values())


def test_bf16_fast_path_equals_its_plain_forward():
    plain, cached = pair(randomised(), fast=True)
    for size in [(7, 5), (33, 48), (64, 64)]:
        x = torch.randn(1, 3, *size)
        expected, out = fastpath.run_model(plain, x, True), fastpath.run_model(cached, x, True)
        assert out.dtype == torch.float32 and out.shape == expected.shape
        # bf16: a different convolution shape may round a few values differently
        assert torch.allclose(out, expected, atol=0.02 * expected.abs().max().item())
        assert (out.argmax(1) == expected.argmax(1)).float().mean() > 0.99


def test_cache_is_bounded_reused_and_notices_new_weights():
    model = fastpath.prepare_model(randomised(), False, 3)
    trunk = model.backbone.forward_taps.__self__
    trunk.max_sizes = 2
    for size in [(10, 10), (12, 12), (14, 14), (14, 14)]:
        fastpath.run_model(model, torch.randn(1, 3, *size), False)
    assert [key[0] for key in trunk.plans] == [(12, 12), (14, 14)]
    with torch.no_grad():
        model.backbone.features[0].bias.add_(1.0)  # changed in place: the constants change too
    x = torch.randn(1, 3, 14, 14)
    out = fastpath.run_model(model, x, False)
    padcache.uninstall(model)
    assert torch.allclose(out, fastpath.run_model(model, x, False), atol=1e-5 * out.abs().max().item())


def test_not_used_in_same_geometry_training_or_autograd():
    same = fastpath.prepare_model(randomised(geometry="same"), False, 3)
    assert "forward_taps" not in same.backbone.__dict__  # no pad: nothing to cache
    model = fastpath.prepare_model(randomised(), False, 3)
    x = torch.randn(1, 3, 9, 9, requires_grad=True)
    model(x).sum().backward()  # grad enabled: the plain forward, so gradients flow as usual
    assert x.grad is not None and not plans(model)
    model.train()
    with torch.no_grad():
        model(torch.randn(1, 3, 9, 9))
    assert not plans(model)


def test_a_copy_gets_its_own_cache():
    model = fastpath.prepare_model(randomised(), False, 3)
    x = torch.randn(1, 3, 11, 13)
    out = fastpath.run_model(model, x, False)
    twin = copy.deepcopy(model)
    assert not plans(twin) and plans(model)
    assert twin.backbone.forward_taps.__self__.trunk is twin.backbone
    assert torch.equal(fastpath.run_model(twin, x, False), out)


def test_compile_wrapper_traces_the_plain_forward():
    model = fastpath.prepare_model(randomised(), False, 3)
    assert "forward_taps" in model.backbone.__dict__
    fastpath.Compiled(model)  # compiles lazily; only the uninstall is checked here
    assert "forward_taps" not in model.backbone.__dict__


def test_the_first_image_of_a_size_fills_the_cache_for_the_next_ones():
    plain, cached = pair(randomised(), fast=False)
    first_conv = cached.backbone.features[0]
    calls = []
    first_conv.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    first = torch.randn(2, 3, 16, 20)
    assert torch.allclose(fastpath.run_model(cached, first, False), fastpath.run_model(plain, first, False), atol=1e-5)
    assert calls == [
        (2, 3, 16, 20)
    ]  # a new size whose first map is no larger than its zero maps would be: one plain forward
    assert plans(cached) and all(plan is not None for plan in plans(cached).values())
    for batch in (1, 3):  # other images (and batch sizes) of that size take the partial forward
        x = torch.randn(batch, 3, 16, 20) * 3
        expected = fastpath.run_model(plain, x, False)
        out = fastpath.run_model(cached, x, False)
        assert torch.allclose(out, expected, atol=1e-5 * expected.abs().max().item())
    assert len(calls) == 1  # no plain forward again: the partial one runs conv1 on its rectangle itself


def test_cache_stays_within_its_byte_budget_but_keeps_the_newest_size():
    model = fastpath.prepare_model(randomised(), False, 3)
    trunk = model.backbone.forward_taps.__self__
    fastpath.run_model(model, torch.randn(1, 3, 10, 10), False)
    one = next(iter(trunk.plans.values())).nbytes
    assert one > 0
    trunk.max_bytes = int(2.5 * one)  # about two sizes of this scale
    for size in [(11, 11), (12, 12), (13, 13)]:
        fastpath.run_model(model, torch.randn(1, 3, *size), False)
    assert 1 <= len(trunk.plans) < 4 and sum(p.nbytes for p in trunk.plans.values()) <= trunk.max_bytes
    assert list(trunk.plans)[-1][0] == (13, 13)
    trunk.max_bytes = 0  # even a budget too small for one size keeps the newest
    fastpath.run_model(model, torch.randn(1, 3, 14, 14), False)
    assert [key[0] for key in trunk.plans] == [(14, 14)]


def test_preparing_again_for_the_other_path_runs_the_new_layers():
    model = randomised()
    x = torch.randn(1, 3, 30, 34)
    with torch.no_grad():
        reference = model(x)
    fastpath.prepare_model(model, False, 3)
    fastpath.run_model(model, x, False)  # caches taken from the fp32 layers
    fastpath.prepare_model(model, True, 3)
    assert isinstance(model.backbone.features[0], fastpath.SplitStemConv2d)
    assert model.backbone.forward_taps.__self__.layers[0] is model.backbone.features[0]
    for _ in range(2):
        out = fastpath.run_model(model, x, True)
        assert (out.argmax(1) == reference.argmax(1)).float().mean() > 0.99


@pytest.mark.parametrize(
    "name, backbone, fast", [("fcn8s", "vgg16", False), ("fcn32s", "alexnet", False), ("fcn8s", "vgg16", True)]
)
def test_a_new_size_takes_its_constants_from_a_small_zero_image(name, backbone, fast):
    """Where the first map is larger than the zero map its geometry asks for, a new size's constants
    come from zero maps of the same sizes modulo the trunk's stride, and its first image already runs
    the partial forward: the same outputs as the plain forward, with the first convolution never run
    on the whole padded image."""
    plain, cached = pair(randomised(name, backbone), fast=fast)
    trunk = cached.backbone.forward_taps.__self__
    seen = []
    cached.backbone.features[0].register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    sizes = [(250, 270), (250, 270), (270, 250), (231, 301)]  # AlexNet's first map: 66-126 cells
    for size in sizes:
        x = torch.randn(2, 3, *size)
        expected = fastpath.run_model(plain, x, fast)
        out = fastpath.run_model(cached, x, fast)
        assert out.shape == expected.shape
        # bf16: a different convolution shape may round a few values differently
        assert torch.allclose(out, expected, atol=(0.02 if fast else 1e-5) * expected.abs().max().item()), size
        assert (out.argmax(1) == expected.argmax(1)).float().mean() > (0.99 if fast else 0.9999)
    assert trunk.zero_runs == 3 and trunk.zero_scale == 1  # one per new size, at the size the geometry asks for
    assert len(plans(cached)) == 3 and all(plan is not None for plan in plans(cached).values())
    assert not {(2, 3, *size) for size in sizes} & set(seen)  # no plain forward: zero images and tiles only
