"""The models' faster layer forms compute what the plain layers compute: a fixed bilinear upsampler as
two matrix products (or per class on large maps), fc6's weight gradient as one matrix product, dropout
masks from uniform draws. Each is checked against the plain operation, and its dispatch both ways."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models import create_model
from fcnseg.models.flops import count_flops
from fcnseg.models.layers import (
    SEPARABLE_MAX_CELLS,
    BatchNorm2d,
    BilinearUpsample,
    Dropout,
    SameConv2d,
    symbolic,
    to_plain_torch_layers,
    tracing,
)


def _plain_upsample(up: BilinearUpsample, x: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(x, up.weight, stride=up.stride)


@pytest.mark.parametrize(
    "classes, factor, kernel, size",
    [(6, 8, None, (12, 12)), (3, 2, None, (5, 7)), (4, 32, 63, (3, 2)), (2, 8, None, (SEPARABLE_MAX_CELLS + 3, 4))],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fixed_bilinear_upsampler_equals_the_transposed_convolution(classes, factor, kernel, size, channels_last):
    """Forward and input gradient, float64; the last size is past the products' limit (per class)."""
    torch.manual_seed(0)
    up = BilinearUpsample(classes, factor, learnable=False, kernel_size=kernel).double()
    x = torch.randn(2, classes, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ours, plain = up(xs[0]), _plain_upsample(up, xs[1])
    assert ours.shape == plain.shape
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(plain)
    ours.backward(grad)
    plain.backward(grad)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-12, atol=1e-12)
    # what ran: the products (no convolution in the graph) up to the limit, per class beyond
    assert ("Convolution" in ours.grad_fn.name()) == (max(size) > SEPARABLE_MAX_CELLS)


def test_upsampler_dispatch_follows_the_weight_and_the_gradient():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 5)
    learnable = BilinearUpsample(3, 2, learnable=True)
    assert learnable.is_bilinear()
    out = learnable(x)  # training: the weight needs its gradient, so the transposed convolution runs
    assert "Convolution" in out.grad_fn.name()
    out.sum().backward()
    assert learnable.weight.grad is not None and learnable.weight.grad[0, 1].abs().sum() > 0
    with torch.no_grad():  # no gradient asked for: the products, same result
        torch.testing.assert_close(learnable(x), _plain_upsample(learnable, x))
        learnable.weight[0, 1, 1, 1] = 0.5  # an in-place change (an optimiser step) is seen at once
    assert not learnable.is_bilinear()
    with torch.no_grad():
        torch.testing.assert_close(learnable(x), _plain_upsample(learnable, x))
    fixed = BilinearUpsample(3, 2, learnable=False)
    other = fixed.state_dict()
    other["weight"] = other["weight"] * 2
    fixed.load_state_dict(other)  # a loaded file's filter that is not bilinear keeps the convolution
    assert not fixed.is_bilinear()
    torch.testing.assert_close(fixed(x), _plain_upsample(fixed, x))
    fixed.load_state_dict(BilinearUpsample(3, 2, learnable=False).state_dict())
    assert fixed.is_bilinear()


def test_upsampler_under_bf16_autocast_matches_the_convolution():
    torch.manual_seed(0)
    up = BilinearUpsample(6, 8, learnable=False)
    x = torch.randn(2, 6, 12, 12)
    with torch.autocast("cpu", torch.bfloat16):
        ours, plain = up(x), _plain_upsample(up, x)
    assert ours.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), plain.float(), rtol=2e-2, atol=2e-2)


def test_symbolic_passes_run_the_plain_layers():
    """FLOP counts (fake tensors) see the architecture's own operations, the same with and without
    data: the dense transposed convolution, the whole 7x7 fc6."""
    assert not tracing()
    with symbolic():
        assert tracing()
    assert not tracing()
    model = create_model("fcn8s", 6, backbone="vgg16_bn", width=1 / 16, geometry="same")
    with torch.device("meta"):
        meta = create_model("fcn8s", 6, backbone="vgg16_bn", width=1 / 16, geometry="same")
    assert count_flops(model, (64, 64)) == count_flops(meta, (64, 64)) > 0


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (2, 3)])
def test_fc6_weight_gradient_as_a_product_under_bf16_autocast(size):
    """The demo's bf16 step: same output dtype and values as the plain convolution under autocast,
    gradients in the parameters' own dtype and within bf16 rounding of the plain ones."""
    torch.manual_seed(0)
    fast = SameConv2d(16, 32, 7, padding=3)
    plain = nn.Conv2d(16, 32, 7, padding=3)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(4, 16, *size).contiguous(memory_format=torch.channels_last)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    with torch.autocast("cpu", torch.bfloat16):
        outs = [m(xi) for m, xi in zip((fast, plain), xs)]
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    assert "WeightGradAsMatmul" in outs[0].grad_fn.name()
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=2e-2, atol=2e-2)
    grad = torch.randn(outs[1].shape)
    for out in outs:
        out.float().backward(grad)
    for ours, theirs in (
        (xs[0].grad, xs[1].grad),
        (fast.weight.grad, plain.weight.grad),
        (fast.bias.grad, plain.bias.grad),
    ):
        assert ours.dtype == theirs.dtype == torch.float32
        scale = theirs.abs().max()
        assert (ours - theirs).abs().max() <= 2e-2 * scale


def test_fc6_runs_the_plain_convolution_where_no_weight_gradient_is_needed():
    fc6 = SameConv2d(8, 16, 7, padding=3)
    x = torch.randn(1, 8, 3, 3, requires_grad=True)
    assert "WeightGradAsMatmul" in fc6(x).grad_fn.name()
    fc6.weight.requires_grad_(False)
    fc6.bias.requires_grad_(False)
    assert "WeightGradAsMatmul" not in fc6(x).grad_fn.name()
    with torch.no_grad():
        assert fc6(x).grad_fn is None


def test_dropout_keeps_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(64, 128, 3, 3)
    drop = Dropout(0.3)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(1)
    out = drop(xg)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(xg.grad, (out != 0).float() / 0.7)  # gradient through the same mask
    torch.manual_seed(1)
    torch.testing.assert_close(drop(x), out.detach())  # the mask follows torch's generator
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(Dropout(0.0)(x), x) and Dropout(1.0)(x).abs().sum() == 0
    inplace = Dropout(0.5, inplace=True)
    z = torch.ones(4, 8)
    assert inplace(z) is z and set(z.unique().tolist()) <= {0.0, 2.0}


def test_dropout_is_an_nn_dropout_for_code_that_asks():
    assert isinstance(Dropout(), nn.Dropout)
    head = create_model("fcn8s", 6, backbone="vgg16_bn", width=1 / 16, geometry="same").backbone.classifier
    assert sum(isinstance(m, Dropout) for m in head) == 2


@pytest.mark.parametrize("training", [False, True])
def test_plain_torch_layers_compute_what_fcnseg_layers_compute(training):
    """The benchmarks' plain PyTorch baseline: every faster form swapped for its torch.nn twin, same
    weights, dtype and mode, same scores (dropout off: its masks are drawn differently)."""
    torch.manual_seed(0)
    model = create_model("fcn8s", 6, backbone="vgg16_bn", width=1 / 16, geometry="same").double()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0

    plain = to_plain_torch_layers(copy.deepcopy(model).train(training))
    model.train(training)
    kinds = {type(m) for m in plain.modules()}
    assert not kinds & {SameConv2d, BatchNorm2d, Dropout, BilinearUpsample}
    assert nn.ConvTranspose2d in kinds and nn.BatchNorm2d in kinds
    assert all(p.dtype == torch.float64 for p in plain.parameters())
    assert not plain.upscore8.weight.requires_grad and plain.upscore2.weight.requires_grad
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(plain(x), model(x))
