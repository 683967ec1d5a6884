"""3x3 convolutions + ReLU by Winograd's minimal filtering, F(4x4, 3x3): 4x fewer multiplications.

Each 4x4 block of output cells is computed from the 6x6 input tile around it (tiles overlap by 2):
``Y = A^T [(G g G^T) * (B^T d B)] A`` (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016). With the weight transformed once (``U = G g G^T``, 36 matrices of C x C_out) a
layer becomes three dense matrix products: the input transform (one GEMM with the 36x36 matrix
``B^T (x) B^T`` over all tiles), 36 products of (tiles x C) by (C x C_out), and the output transform
(16x36). 144 multiplications per output block and channel pair instead of 16 * 9 * 4 = 576: the
channel products dominate, so wide layers (VGG16's conv4 and conv5: 512 channels) run at about half
the time of oneDNN's direct fp32 convolution on AVX2 (see :func:`applies_to`); narrow ones, where
the transforms' memory traffic outweighs the saving, keep the direct convolution.

Rounding: the transforms' constants (1/4, 1/6, 1/24; points 0, +-1, +-2) cost a few bits; on random
VGG-sized layers the largest difference from the direct fp32 convolution is about 1e-5 of the
largest output (tested; :mod:`fcnseg.inference.fastpath` counts argmax agreement on a whole FCN).

Only for inference in fp32 on the CPU; with gradients, another dtype or device it runs the direct
convolution. Work buffers are reused per thread (allocating fresh 30-70 MB blocks on every call
costs page faults comparable to the arithmetic saved).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# F(4x4, 3x3) on the points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, section 4.2)
_BT = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_AT = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
TILE, OUT = 6, 4  # input tile and output block sides
# channels (in and out) from which a layer runs by Winograd: measured under ONEDNN_MAX_CPU_ISA=AVX2 on
# 2 EPYC cores (VGG16 shapes, Caffe geometry at 500x500): 512 -> 512 at 88x88 and 44x44 about 2x
# faster than oneDNN's direct convolution, 256 -> 256 at 175x175 about even, 128 and 64 slower
MIN_CHANNELS = 256
# output cells (over the batch) from which a call runs by Winograd: the transformed weight is 4x the
# direct one, and on small maps streaming it costs more than the saved arithmetic (an estimate: at
# 100 GFLOP/s and ~10 GB/s, a 512 -> 512 layer breaks even near 9x9 cells; 32x32 leaves a margin)
MIN_PIXELS = 32 * 32
# work buffers hold at most this many floats (rows of tiles run in chunks): bounded memory on big
# images, and each chunk's data stays closer to the caches
MAX_BUFFER = 16 << 20
_BIAS_CELL = 1 * TILE + 1  # A^T e_1 = (1, 1, 1, 1): a bias added at cell (1, 1) reaches all 16 outputs

_buffers = threading.local()


def _buffer(name: str, numel: int) -> Tensor:
    """A reused float32 work buffer of at least ``numel`` elements (per thread, grown as needed)."""
    store = _buffers.__dict__.setdefault("store", {})
    buf = store.get(name)
    if buf is None or buf.numel() < numel:
        buf = store[name] = torch.empty(numel)
    return buf[:numel]


def release_buffers() -> None:
    """Free this thread's work buffers (they are kept for the next call otherwise)."""
    _buffers.__dict__.pop("store", None)


def transformed_weight(weight: Tensor) -> Tensor:
    """(C_out, C, 3, 3) -> (36, C, C_out): ``G g G^T`` for every channel pair, computed in float64."""
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ak,oikl,bl->abio", g, weight.detach().double().cpu(), g)
    return u.reshape(TILE * TILE, weight.shape[1], weight.shape[0]).float().contiguous()


class WinogradConvReLU(nn.Module):
    """relu(conv3x3(x) + bias), stride 1, by F(4x4, 3x3). Keeps the convolution's ``weight`` and
    ``bias`` (the state dict, the direct fallback) next to the transformed weight."""

    def __init__(self, weight: Tensor, bias: Tensor, padding: tuple[int, int], relu_inplace: bool = False) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = (3, 3), (1, 1), tuple(padding)
        self.dilation, self.groups = (1, 1), 1
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        self.relu_inplace = relu_inplace
        self.max_buffer = MAX_BUFFER
        self.register_buffer("transformed", transformed_weight(weight), persistent=False)
        self.register_buffer("kron_in", _kron(_BT, _BT), persistent=False)  # (36, 36)
        self.register_buffer("kron_out", _kron(_AT, _AT), persistent=False)  # (16, 36)

    @staticmethod
    def applies_to(weight: Tensor, stride, dilation, groups: int, padding, min_channels: int = MIN_CHANNELS) -> bool:
        """A 3x3, stride 1, undilated, ungrouped fp32 convolution with >= ``min_channels`` in and out."""
        return (
            tuple(weight.shape[2:]) == (3, 3)
            and weight.dtype == torch.float32
            and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1)
            and groups == 1
            and isinstance(padding, tuple)
            and min(weight.shape[:2]) >= min_channels
        )

    def forward(self, x: Tensor, padding: tuple | None = None) -> Tensor:
        padding = self.padding if padding is None else padding
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.relu(F.conv2d(x, self.weight, self.bias, 1, padding))
        if any(padding):
            x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        return self._winograd(x)

    def forward_unpadded(self, x: Tensor) -> Tensor:
        """The convolution without its zero padding (the caller pads; see fcnseg.inference.padcache)."""
        return self.forward(x, padding=(0, 0))

    def _winograd(self, x: Tensor) -> Tensor:
        n, channels, height, width = x.shape
        out_h, out_w = height - 2, width - 2
        if out_h < 1 or out_w < 1 or n * out_h * out_w < MIN_PIXELS:
            return F.relu(F.conv2d(x, self.weight, self.bias))
        rows, cols = -(-out_h // OUT), -(-out_w // OUT)
        out_channels = self.weight.shape[0]
        nhwc = x.permute(0, 2, 3, 1)  # a view for channels_last input
        extra_h, extra_w = OUT * rows + 2 - height, OUT * cols + 2 - width
        if extra_h or extra_w:  # whole tiles: zeros past the bottom and right edges
            nhwc = F.pad(nhwc, (0, 0, 0, extra_w, 0, extra_h))
        out = torch.empty(n, out_h, out_w, out_channels)
        per_row = TILE * TILE * n * cols * max(channels, out_channels)  # the largest buffer, per row of tiles
        step = max(1, min(rows, self.max_buffer // per_row))
        for top in range(0, rows, step):
            self._tile_rows(nhwc, out, top, min(rows, top + step))
        return out.permute(0, 3, 1, 2)  # (n, C_out, h, w) in channels_last memory order

    def _tile_rows(self, nhwc: Tensor, out: Tensor, top: int, bottom: int) -> None:
        """Output rows of tiles [top, bottom) of ``nhwc`` (padded to whole tiles) into ``out`` (NHWC)."""
        n, _, _, channels = nhwc.shape
        out_h, out_w, out_channels = out.shape[1:]
        rows, cols, cells = bottom - top, (nhwc.shape[2] - 2) // OUT, TILE * TILE
        tiles = n * rows * cols
        s = nhwc.stride()
        windows = nhwc.as_strided(
            (TILE, TILE, n, rows, cols, channels),
            (s[1], s[2], s[0], OUT * s[1], OUT * s[2], s[3]),
            nhwc.storage_offset() + OUT * top * s[1],
        )
        gathered = _buffer("gathered", cells * tiles * channels).view(TILE, TILE, n, rows, cols, channels)
        gathered.copy_(windows)
        spectra = _buffer("spectra", cells * tiles * channels).view(cells, tiles * channels)
        torch.mm(self.kron_in, gathered.view(cells, -1), out=spectra)
        products = _buffer("products", cells * tiles * out_channels).view(cells, tiles, out_channels)
        torch.bmm(spectra.view(cells, tiles, channels), self.transformed, out=products)
        products[_BIAS_CELL].add_(self.bias)
        blocks = _buffer("blocks", OUT * OUT * tiles * out_channels).view(OUT * OUT, tiles * out_channels)
        torch.mm(self.kron_out, products.view(cells, -1), out=blocks)
        blocks.clamp_(min=0)
        grid = blocks.view(OUT, OUT, n, rows, cols, out_channels).permute(2, 3, 0, 4, 1, 5)
        first, last = OUT * top, min(out_h, OUT * bottom)
        if last - first == OUT * rows and out_w == OUT * cols:
            out[:, first:last].view(n, rows, OUT, cols, OUT, out_channels).copy_(grid)
        else:  # a partial block at the bottom or right edge
            whole = _buffer("whole", tiles * OUT * OUT * out_channels).view(n, rows, OUT, cols, OUT, out_channels)
            whole.copy_(grid)
            out[:, first:last].copy_(whole.view(n, OUT * rows, OUT * cols, out_channels)[:, : last - first, :out_w])

    def unfused(self) -> tuple[nn.Conv2d, nn.ReLU]:
        """The two layers again (see fcnseg.inference.fastpath.unfuse_conv_relu)."""
        out_channels, in_channels = self.weight.shape[:2]
        conv = nn.Conv2d(in_channels, out_channels, 3, 1, self.padding, device=self.weight.device)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            conv.bias.copy_(self.bias)
        return conv, nn.ReLU(inplace=self.relu_inplace)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        with torch.no_grad():
            self.transformed.copy_(transformed_weight(self.weight))

    def extra_repr(self) -> str:
        out_channels, in_channels = self.weight.shape[:2]
        return f"{in_channels} -> {out_channels}, 3x3 by Winograd F(4x4, 3x3), padding={self.padding}, + ReLU"


def _kron(a: tuple, b: tuple) -> Tensor:
    return torch.kron(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).float()
