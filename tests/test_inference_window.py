"""Sliding window, test-time augmentation and shift-and-stitch on small stand-in nets."""

import math

import pytest
import torch
from torch import nn

from fcnseg.inference import shift_and_stitch, sliding_window, tta
from fcnseg.inference.window import blend_weights, tile_starts


def pointwise_probs(num_classes=4):
    """A per-pixel net (1x1 conv + softmax): tiling cannot change its output."""
    conv = nn.Conv2d(3, num_classes, 1)
    return lambda x: conv(x.float()).softmax(1)


def collect(probs_fn, image, num_classes, tile, overlap):
    """Run sliding_window and reassemble the bands; also return the band heights seen by the sink."""
    out = torch.full((num_classes, *image.shape[1:]), float("nan"))
    bands = []

    def sink(y0, probs):
        bands.append((y0, probs.shape[1]))
        out[:, y0 : y0 + probs.shape[1]] = probs

    with torch.no_grad():
        sliding_window(probs_fn, image, num_classes, tile, overlap, sink)
    return out, bands


@pytest.mark.parametrize("length,tile,stride", [(10, 4, 3), (100, 32, 24), (5, 8, 6), (32, 32, 24)])
def test_tile_starts_cover_everything_with_a_flush_last_tile(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    covered = set()
    for s in starts:
        covered.update(range(s, min(s + tile, length)))
    assert covered == set(range(length))
    assert starts[-1] == max(0, length - tile)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_blend_weights_positive_and_flat_in_the_middle():
    w = blend_weights(16, 20, ramp=4)
    assert w.min() > 0 and w[8, 10] == 1 and w[0, 0] < w[2, 2] < w[4, 4]


def test_tiled_equals_whole_image_for_a_pointwise_net():
    fn = pointwise_probs()
    image = torch.rand(3, 45, 70)
    whole, _ = collect(fn, image, 4, tile=100, overlap=0.25)
    tiled, bands = collect(fn, image, 4, tile=16, overlap=0.3)
    assert not torch.isnan(tiled).any()
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    # rows stream out top to bottom in consecutive bands no taller than a tile: memory ~ tile x W
    assert bands[0][0] == 0 and all(a + h == b for (a, h), (b, _) in zip(bands, bands[1:]))
    assert sum(h for _, h in bands) == 45 and max(h for _, h in bands) <= 16


def test_tiles_blend_a_context_net_smoothly():
    """With a 5x5 conv, tiles differ from the whole image only near tile borders, and only a little."""
    conv = nn.Conv2d(3, 3, 5, padding=2)
    fn = lambda x: conv(x).softmax(1)  # noqa: E731
    image = torch.rand(3, 40, 40)
    whole, _ = collect(fn, image, 3, tile=64, overlap=0.25)
    tiled, _ = collect(fn, image, 3, tile=16, overlap=0.5)
    diff = (tiled - whole).abs()
    assert diff.max() < 0.2 and diff.mean() < 0.02
    assert diff[:, :6, :6].max() < 1e-5  # the top-left corner is interior to the first tile only


def test_tta_flip_and_scales_match_a_hand_computation():
    conv = nn.Conv2d(3, 2, 3, padding=1)
    fn = lambda x: conv(x).softmax(1)  # noqa: E731
    x = torch.rand(1, 3, 12, 18)
    with torch.no_grad():
        flipped = tta(fn, flip=True)(x)
        expected = (fn(x) + fn(x.flip(-1)).flip(-1)) / 2
        torch.testing.assert_close(flipped, expected)
        multi = tta(fn, scales=(1.0, 0.5))(x)
        small = fn(nn.functional.interpolate(x, size=(6, 9), mode="bilinear", align_corners=False))
        back = nn.functional.interpolate(small, size=(12, 18), mode="bilinear", align_corners=False)
        torch.testing.assert_close(multi, (fn(x) + back) / 2)
    assert tta(fn) is fn


class CoarseNet(nn.Module):
    """conv 3x3 + ReLU + 4x4 max pool: output stride 4."""

    output_stride = 4

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, padding=1)
        self.pool = nn.MaxPool2d(4)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


def shift_and_stitch_by_hand(net, x, f):
    """Independent reference: copy each shifted input onto a zero canvas, then place outputs pixel by pixel."""
    n, _, h, w = x.shape
    canvas_h, canvas_w = math.ceil(h / f) * f, math.ceil(w / f) * f
    out = torch.zeros(n, 3, h, w)
    for dy in range(f):
        for dx in range(f):
            shifted = torch.zeros(n, 3, canvas_h, canvas_w)
            part = x[:, :, dy:, dx:]
            shifted[:, :, : part.shape[2], : part.shape[3]] = part
            coarse = net(shifted)
            for i in range(coarse.shape[2]):
                for j in range(coarse.shape[3]):
                    y, xx = i * f + dy, j * f + dx
                    if y < h and xx < w:
                        out[:, :, y, xx] = coarse[:, :, i, j]
    return out


@pytest.mark.parametrize("size", [(16, 16), (13, 18)])
def test_shift_and_stitch_equals_shifting_and_interlacing_by_hand(size):
    net = CoarseNet()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        dense = shift_and_stitch(net, x, 4)
        expected = shift_and_stitch_by_hand(net, x, 4)
    assert dense.shape == (2, 3, *size)
    torch.testing.assert_close(dense, expected)
    if size == (16, 16):  # every 4th pixel of the dense output is the plain coarse output
        torch.testing.assert_close(dense[:, :, ::4, ::4], net(x))


def test_shift_and_stitch_rejects_a_wrong_factor():
    with pytest.raises(ValueError, match="output stride"):
        shift_and_stitch(CoarseNet(), torch.randn(1, 3, 16, 16), 2)
