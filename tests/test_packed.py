"""Weights packed once for oneDNN (fcnseg.inference.packed): the products of the plain weight, and a
holder that copies, pickles and converts like a tensor would."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.inference import packed
from fcnseg.inference.fastpath import GemmConv2d
from fcnseg.inference.packed import PackedWeight
from fcnseg.inference.winograd import WinogradConvReLU


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_products_equal_the_plain_weights(dtype):
    torch.manual_seed(0)
    weight, bias, x = torch.randn(24, 40).to(dtype), torch.randn(24).to(dtype), torch.randn(3, 7, 40).to(dtype)
    layer = PackedWeight(weight)
    if dtype == torch.float32:  # bf16 packs only where oneDNN has bf16 kernels (not on AVX2-only CPUs)
        assert layer.is_packed == torch.backends.mkldnn.is_available()
    with torch.inference_mode():
        got, want = layer(x, bias), F.linear(x, weight, bias)
    assert got.dtype == dtype and got.shape == (3, 7, 24)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(got.float(), want.float(), atol=tolerance * want.abs().max().item())
    assert torch.equal(layer.dense(), weight)  # unpacking gives the weight back exactly


def test_without_onednn_the_plain_weight_runs(monkeypatch):
    monkeypatch.setattr(packed, "_pack", lambda weight: None)
    weight, x = torch.randn(5, 8), torch.randn(2, 8)
    layer = PackedWeight(weight)
    assert not layer.is_packed
    assert torch.allclose(layer(x), x @ weight.t())


def test_copies_pickles_and_gradients():
    weight, x = torch.randn(6, 16), torch.randn(4, 16, requires_grad=True)
    layer = PackedWeight(weight)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.is_packed == layer.is_packed and torch.equal(clone.dense(), weight)
    layer(x).sum().backward()  # with gradients: the plain product, differentiable in x
    assert torch.allclose(x.grad, weight.sum(0).expand(4, 16))
    assert not PackedWeight(weight).plain().is_packed


def test_a_gemm_layer_converts_its_packed_weight_with_the_module():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 12, 3, padding=1)
    layer = GemmConv2d(conv).to(torch.bfloat16)
    assert layer.packed.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    x = torch.randn(1, 16, 9, 9).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = F.conv2d(x.float(), conv.weight.bfloat16().float(), conv.bias.bfloat16().float(), padding=1)
        assert torch.allclose(layer(x).float(), want, atol=0.05 * want.abs().max().item())
    assert torch.equal(copy.deepcopy(layer).conv_weight(), layer.conv_weight())


def test_a_winograd_layer_deep_copies_and_converts(monkeypatch):
    from fcnseg.inference import winograd

    monkeypatch.setattr(winograd, "MIN_PIXELS", {3: 1, 7: 1})
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    layer = WinogradConvReLU(conv.weight, conv.bias, conv.padding)
    x = torch.randn(1, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = F.relu(conv(x))
        assert torch.allclose(copy.deepcopy(layer)(x), want, atol=1e-5)
        half = copy.deepcopy(layer).to(torch.bfloat16)  # another dtype: the direct convolution, converted weights
        assert all(cell.dtype == torch.bfloat16 for cell in half.packed)
        assert torch.allclose(half(x.bfloat16()).float(), want, atol=0.05 * want.abs().max().item())
