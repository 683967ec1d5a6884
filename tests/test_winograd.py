"""Winograd F(4x4, 3x3) convolutions on the fp32 path: the direct convolution's values, on any size."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.data.normalize import normalize
from fcnseg.inference import Segmenter, fastpath, winograd
from fcnseg.inference.winograd import WinogradConvReLU
from fcnseg.models import create_model


def every_size(monkeypatch):
    """Winograd on maps of any size (the default: only where the transformed weight pays)."""
    monkeypatch.setattr(winograd, "MIN_PIXELS", {3: 1, 7: 1})


def conv_relu(channels_in=8, channels_out=6, padding=1, seed=0, kernel=3):
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels_in, channels_out, kernel, padding=padding)
    with torch.no_grad():
        conv.bias.normal_(0, 0.1)
    return conv


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (9, 12), (17, 30), (33, 32)])
@pytest.mark.parametrize("padding", [0, 1, 100])
@pytest.mark.parametrize("kernel", [3, 7])
def test_equals_the_direct_convolution_and_relu(monkeypatch, size, padding, kernel):
    every_size(monkeypatch)
    conv = conv_relu(padding=padding, kernel=kernel)
    layer = WinogradConvReLU(conv.weight, conv.bias, conv.padding)
    x = torch.randn(2, 8, *size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = F.relu(conv(x))
        got = layer(x)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, expected, atol=1e-5 * expected.abs().max().item())
    with torch.inference_mode():  # padcache's entry: no padding of its own
        unpadded = layer.forward_unpadded(F.pad(x, (padding,) * 4))
    assert torch.allclose(unpadded, expected, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("kernel", [3, 7])
def test_nchw_input_gradients_and_state_dict(monkeypatch, kernel):
    """3x3 layers keep the weight; 7x7 (fc6) recompute it from the transformed one: same state dict."""
    every_size(monkeypatch)
    conv = conv_relu(kernel=kernel)
    layer = WinogradConvReLU(conv.weight, conv.bias, conv.padding)
    x = torch.randn(1, 8, 13, 11)  # plain NCHW memory works too
    with torch.inference_mode():
        assert torch.allclose(layer(x), F.relu(conv(x)), atol=1e-5)
    assert torch.allclose(layer(x), F.relu(conv(x)), atol=1e-5)  # with gradients: the direct convolution
    state = layer.state_dict()
    assert set(state) == {"weight", "bias"}  # a prepared model saves like the original
    assert torch.allclose(state["weight"], conv.weight, atol=1e-6)  # 7x7: recomputed, ~1e-7 off
    other = conv_relu(seed=1, kernel=kernel)
    layer.load_state_dict(other.state_dict())  # new weights reach the transformed copy
    with torch.inference_mode():
        assert torch.allclose(layer(x), F.relu(other(x)), atol=1e-5)
    conv2, relu = layer.unfused()
    assert torch.allclose(conv2.weight, other.weight, atol=1e-6) and isinstance(relu, nn.ReLU)


def test_applies_only_to_wide_plain_3x3_convolutions():
    wide = nn.Conv2d(256, 256, 3, padding=1)
    assert WinogradConvReLU.applies_to(wide.weight, wide.stride, wide.dilation, wide.groups, wide.padding, 256)
    narrow = nn.Conv2d(128, 256, 3, padding=1)
    assert not WinogradConvReLU.applies_to(narrow.weight, narrow.stride, narrow.dilation, 1, narrow.padding, 256)
    for odd in (nn.Conv2d(256, 256, 3, stride=2), nn.Conv2d(256, 256, 3, dilation=2), nn.Conv2d(256, 256, 5)):
        assert not WinogradConvReLU.applies_to(odd.weight, odd.stride, odd.dilation, odd.groups, odd.padding, 256)


def randomised(geometry):
    torch.manual_seed(0)
    model = create_model("fcn8s", 3, geometry=geometry, width=1 / 16).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("geometry", ["caffe", "same"])
def test_a_whole_fcn_agrees_with_its_plain_fp32_forward(monkeypatch, geometry):
    """Forced onto every 3x3 convolution of a tiny FCN-8s (the default takes >= 256 channels), with
    and without the pad-constant cache, at sizes that are no multiple of the 4x4 output block."""
    every_size(monkeypatch)
    model = randomised(geometry)
    plain = fastpath.prepare_model(copy.deepcopy(model), False, 3, pad_constants=False, use_winograd=False)
    assert fastpath.winograd_layers(plain) == {}
    for pad_constants in (False, True):
        fast = fastpath.prepare_model(copy.deepcopy(model), False, 3, pad_constants, winograd_min_channels=1)
        assert fastpath.winograd_layers(fast) == {"F(4x4,3x3)": 13, "F(2x2,7x7)": 1}  # every 3x3 conv, fc6
        for size in [(45, 70), (64, 64)]:
            x = torch.randn(1, 3, *size)
            expected = fastpath.run_model(plain, x, False)
            for _ in range(2):  # with the pad cache: the first call fills it, the second uses it
                out = fastpath.run_model(fast, x, False)
                assert torch.allclose(out, expected, atol=1e-4 * expected.abs().max().item())
                assert (out.argmax(1) == expected.argmax(1)).float().mean() >= 0.999


@pytest.mark.parametrize("fast", [False, True])
def test_dispatch_on_both_answers_and_describe_says_which(monkeypatch, fast):
    """fp32 path: Winograd where the channels reach the threshold; the bf16 fast path: never."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    every_size(monkeypatch)
    model = randomised("caffe")
    meta = {"model_name": "fcn8s", "model_kwargs": {"num_classes": 3}, "normalization": "imagenet"}
    seg = Segmenter(model, meta, fast=fast, device="cpu")
    text = seg.describe()
    count = fastpath.winograd_layers(seg.model)
    if fast:
        assert count == {} and "Winograd" not in text and "bf16 weights" in text
    else:
        assert count == {"F(4x4,3x3)": 12, "F(2x2,7x7)": 1}  # not conv1_1 (3 channels)
        assert "Winograd for the convs of >= 4 channels (F(4x4,3x3) x12, F(2x2,7x7) x1;" in text
        reference = fastpath.prepare_model(copy.deepcopy(randomised("caffe")), False, 3, use_winograd=False)
        rgb = np.random.default_rng(0).integers(0, 255, (37, 50, 3), np.uint8)
        x = normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None], "imagenet")
        expected = fastpath.run_model(reference, x, False).softmax(1)[0].numpy()
        assert np.abs(seg.predict_proba(rgb) - expected).max() < 1e-4
        assert (seg.predict(rgb) == expected.argmax(0)).mean() >= 0.999


def test_rows_of_tiles_in_chunks_give_the_same_values(monkeypatch):
    """Big maps run in chunks of tile rows (bounded work buffers): the chunk seams change nothing."""
    every_size(monkeypatch)
    conv = conv_relu()
    layer = WinogradConvReLU(conv.weight, conv.bias, conv.padding)
    x = torch.randn(2, 8, 29, 23).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        whole = layer(x)
        layer.max_buffer = 36 * 2 * 6 * 8  # one row of tiles at a time
        chunked = layer(x)
    assert torch.allclose(chunked, whole, atol=1e-6) and torch.allclose(whole, F.relu(conv(x)), atol=1e-5)


def test_small_maps_take_the_direct_convolution(monkeypatch):
    """Below MIN_PIXELS output cells the transformed weight costs more than it saves: direct conv."""
    conv = conv_relu()
    layer = WinogradConvReLU(conv.weight, conv.bias, conv.padding)
    x = torch.randn(1, 8, 12, 12)
    calls = []
    monkeypatch.setattr(layer, "_tile_rows", lambda *a: calls.append(a))
    with torch.inference_mode():
        assert torch.allclose(layer(x), F.relu(conv(x)), atol=1e-6)
    assert not calls
    every_size(monkeypatch)
    with torch.inference_mode():
        layer(x)
    assert calls
