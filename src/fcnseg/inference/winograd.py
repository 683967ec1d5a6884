"""Convolutions + ReLU by Winograd's minimal filtering: F(4x4, 3x3) for 3x3 kernels (4x fewer
multiplications) and F(2x2, 7x7) for VGG16's fc6 (3x fewer).

Each m x m block of output cells is computed from the (m+k-1)^2 input tile around it (tiles overlap
by k-1): ``Y = A^T [(G g G^T) * (B^T d B)] A`` (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016; the matrices are generated from interpolation points by :func:`matrices`).
With the weight transformed once (``U = G g G^T``: t*t matrices of C x C_out) a layer becomes three
dense matrix products: the input transform (one GEMM with ``B^T (x) B^T`` over all tiles), t*t
products of (tiles x C) by (C x C_out), and the output transform. The channel products dominate, so
wide layers (VGG16's conv3_2 to conv5_3 and fc6) run in a fraction of the time of oneDNN's direct
fp32 convolution on AVX2; narrow ones, where the transforms' memory traffic outweighs the saving,
keep the direct convolution (``MIN_CHANNELS``), and so do small maps (``MIN_PIXELS``).

Rounding: the transforms' constants cost a few bits; on random VGG-sized layers the largest
difference from the direct fp32 convolution is about 1e-5 of the largest output (F(4x4, 3x3) and
F(2x2, 7x7) alike; tests check a whole FCN's agreement with its plain fp32 forward).

Only for inference in fp32 on the CPU; with gradients, another dtype or device it runs the direct
convolution. Work buffers are reused per thread (allocating fresh 30-70 MB blocks on every call
costs page faults comparable to the arithmetic saved).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcnseg.inference.packed import PackedWeight

# interpolation points of the Winograd / Cook-Toom construction (plus the point at infinity), in the
# order that keeps the transforms' constants small (Lavin & Gray, section 4.2)
POINTS = (0, 1, -1, 2, -2, 1 / 2, -1 / 2, 3, -3)
# the output block side per kernel side: F(4x4, 3x3) for 3x3 (4x fewer multiplications), F(2x2, 7x7)
# for VGG16's fc6 (3x fewer; F(4x4, 7x7) would save 7.8x but loses ~1e-3 of the output to rounding)
BLOCK = {3: 4, 7: 2}


@functools.cache
def matrices(block: int, kernel: int) -> tuple[Tensor, Tensor, Tensor]:
    """(A^T, G, B^T) of F(block, kernel) in float64: ``A^T [(G g) * (B^T d)]`` is the valid correlation
    of a tile ``d`` of ``block + kernel - 1`` cells with a kernel ``g``. A^T and G come from the
    points (Vandermonde rows, Lagrange weights); B^T is solved for, so the identity holds exactly."""
    n = block + kernel - 1
    points = torch.tensor(POINTS[: n - 1], dtype=torch.float64)
    at = torch.zeros(block, n, dtype=torch.float64)
    g = torch.zeros(n, kernel, dtype=torch.float64)
    for j, p in enumerate(points):
        weight = torch.prod(torch.stack([p - q for k, q in enumerate(points) if k != j])) if n > 2 else 1.0
        at[:, j] = p ** torch.arange(block, dtype=torch.float64)
        g[j] = p ** torch.arange(kernel, dtype=torch.float64) / weight
    at[block - 1, n - 1] = g[n - 1, kernel - 1] = 1
    # sum_j AT[i, j] G[j, k] BT[j, l] = [l == i + k] for every output i, tap k and input cell l
    system = torch.einsum("ij,jk->ikj", at, g).reshape(block * kernel, n)
    target = torch.zeros(block, kernel, n, dtype=torch.float64)
    for i in range(block):
        for k in range(kernel):
            target[i, k, i + k] = 1
    bt = torch.linalg.lstsq(system, target.reshape(block * kernel, n)).solution
    assert torch.allclose(system @ bt, target.reshape(block * kernel, n), atol=1e-9)
    return at, g, bt


# channels (in and out) from which a layer runs by Winograd: measured under ONEDNN_MAX_CPU_ISA=AVX2 on
# 2 busy EPYC cores, one layer at a time against oneDNN's direct convolution + ReLU (VGG16 shapes at
# 500x500, Caffe geometry; best of 5): 512 -> 512 at 88x88 1.8-2.0x, 256 -> 512 at 88x88 1.3-1.4x,
# 256 -> 256 at 175x175 1.25-1.4x, 128 -> 128 at 349x349 and 128 -> 256 0.92-0.98x (so not them)
MIN_CHANNELS = 256
# output cells (over the batch) from which a call runs by Winograd, per kernel side: the transformed
# weight is (t/k)^2 times the direct one, and on small maps streaming it costs more than the saved
# arithmetic. A cost model (100 GFLOP/s, 10 GB/s) breaks even near 80 cells for F(4x4, 3x3) and 9 for
# F(2x2, 7x7); these thresholds leave a wide margin (VGG16 at 500x500: conv5 44x44, fc6 16x16 cells)
MIN_PIXELS = {3: 32 * 32, 7: 12 * 12}
# work buffers hold at most this many floats (rows of tiles run in chunks): bounded memory on big
# images. Not smaller: each chunk streams the whole transformed weight (4M-float chunks were 1.3-1.6x
# slower than unchunked on 256- and 512-channel layers, 16M about even)
MAX_BUFFER = 16 << 20

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


def transformed_cells(weight: Tensor, block: int, cells_per_pass: int = 8) -> Iterator[Tensor]:
    """(C_out, C, k, k) -> ``G g G^T`` for every channel pair, one (C_out, C) matrix per cell of the
    t x t tile, in cell order. A few cells per pass over the weight (a GEMM with rows of ``G (x) G``),
    so memory stays bounded: fc6's whole transform is 537 MB, and the packed copy is being built."""
    _, g, _ = matrices(block, weight.shape[-1])
    out_channels, in_channels = weight.shape[:2]
    # float32 (float64 would cost fc6's preparation 2x the time for ~1e-8 of its largest weight)
    flat = weight.detach().cpu().float().reshape(out_channels * in_channels, -1)
    kron = torch.kron(g, g).float()  # (t*t, k*k)
    for first in range(0, kron.shape[0], cells_per_pass):
        part = flat @ kron[first : first + cells_per_pass].t()  # (C_out * C, cells)
        for column in part.t():
            yield column.reshape(out_channels, in_channels)


def original_weight(transformed: Tensor, block: int, kernel: int) -> Tensor:
    """The (C_out, C, k, k) weight back from the transformed one, (t*t, C, C_out) (G has full column
    rank)."""
    _, g, _ = matrices(block, kernel)
    cells, in_channels, out_channels = transformed.shape
    u = transformed.transpose(0, 1).reshape(-1, out_channels).t().contiguous()  # (C_out, C * t * t)
    pinv = torch.linalg.pinv(g)  # in float64: the saved weight is the original one to ~1e-7
    w = torch.cat([rows.double() @ torch.kron(pinv, pinv).t() for rows in u.view(-1, cells).split(1 << 20)])
    return w.float().view(out_channels, in_channels, kernel, kernel)


class WinogradConvReLU(nn.Module):
    """relu(conv(x) + bias) for a square k x k kernel, stride 1, by F(m x m, k x k) (m from ``BLOCK``).

    Holds the transformed weight; the convolution's own weight (for the state dict, the direct
    fallback and :meth:`unfused`) is kept as is for 3x3 kernels and recomputed from the transformed
    one for bigger kernels (VGG16's fc6: 411 MB that need not be held twice)."""

    def __init__(self, weight: Tensor, bias: Tensor, padding: tuple[int, int], relu_inplace: bool = False) -> None:
        super().__init__()
        kernel = weight.shape[-1]
        self.block = BLOCK[kernel]
        self.tile = self.block + kernel - 1
        self.kernel_size, self.stride, self.padding = (kernel, kernel), (1, 1), tuple(padding)
        self.dilation, self.groups = (1, 1), 1
        self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        self.relu_inplace = relu_inplace
        self.max_buffer = MAX_BUFFER
        self.in_channels, self.out_channels = weight.shape[1], weight.shape[0]
        self._pack(weight)
        self.keep_weight = kernel == 3
        if self.keep_weight:
            self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        at, _, bt = matrices(self.block, kernel)
        self.register_buffer("kron_in", torch.kron(bt, bt).float(), persistent=False)  # (t*t, t*t)
        self.register_buffer("kron_out", torch.kron(at, at).float(), persistent=False)  # (m*m, t*t)
        # A^T's column for the point 1 is all ones: a bias added at that cell reaches every output
        self.bias_cell = POINTS.index(1) * (self.tile + 1)

    def _pack(self, weight: Tensor) -> None:
        """Hold ``weight``'s transform as one oneDNN-packed (C_out, C) weight per cell
        (:mod:`fcnseg.inference.packed`: 5-20% faster than ``torch.bmm`` on AVX2, 2x natively on an
        AVX512 EPYC, where MKL's fp32 GEMM stays on its AVX2 kernels), packed as it is computed."""
        self.packed = [PackedWeight(cell) for cell in transformed_cells(weight, self.block)]

    def transformed(self) -> Tensor:
        """The transformed weight, (t*t, C, C_out)."""
        return torch.stack([cell.dense().t() for cell in self.packed])

    def _apply(self, fn, recurse=True):  # .to(dtype), .float(): the packed weights too (they are no buffers)
        super()._apply(fn, recurse)
        self.packed = [cell.apply(fn) for cell in self.packed]
        return self

    @staticmethod
    def applies_to(weight: Tensor, stride, dilation, groups: int, padding, min_channels: int) -> bool:
        """A square 3x3 or 7x7, stride 1, undilated, ungrouped fp32 convolution with >= ``min_channels``
        in and out."""
        return (
            weight.dim() == 4
            and weight.shape[-1] == weight.shape[-2]
            and weight.shape[-1] in BLOCK
            and weight.dtype == torch.float32
            and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1)
            and groups == 1
            and isinstance(padding, tuple)
            and min(weight.shape[:2]) >= min_channels
        )

    def conv_weight(self) -> Tensor:
        """The (C_out, C, k, k) convolution weight."""
        if self.keep_weight:
            return self.weight
        return original_weight(self.transformed(), self.block, self.kernel_size[0])

    def forward(self, x: Tensor, padding: tuple | None = None) -> Tensor:
        padding = self.padding if padding is None else padding
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.relu(F.conv2d(x, self.conv_weight(), self.bias, 1, padding))
        if any(padding):
            x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        return self._winograd(x)

    def forward_unpadded(self, x: Tensor) -> Tensor:
        """The convolution without its zero padding (the caller pads; see fcnseg.inference.padcache)."""
        return self.forward(x, padding=(0, 0))

    def _winograd(self, x: Tensor) -> Tensor:
        n, channels, height, width = x.shape
        reach, block = self.kernel_size[0] - 1, self.block
        out_h, out_w = height - reach, width - reach
        if out_h < 1 or out_w < 1 or n * out_h * out_w < MIN_PIXELS[reach + 1]:
            return F.relu(F.conv2d(x, self.conv_weight(), self.bias))
        rows, cols = -(-out_h // block), -(-out_w // block)
        out_channels = self.bias.shape[0]
        nhwc = x.permute(0, 2, 3, 1)  # a view for channels_last input
        extra_h, extra_w = block * rows + reach - height, block * cols + reach - width
        if extra_h or extra_w:  # whole tiles: zeros past the bottom and right edges
            nhwc = F.pad(nhwc, (0, 0, 0, extra_w, 0, extra_h))
        out = torch.empty(n, out_h, out_w, out_channels)
        per_row = self.tile**2 * n * cols * max(channels, out_channels)  # the largest buffer, per row of tiles
        step = max(1, min(rows, self.max_buffer // per_row))
        for top in range(0, rows, step):
            self._tile_rows(nhwc, out, top, min(rows, top + step))
        return out.permute(0, 3, 1, 2)  # (n, C_out, h, w) in channels_last memory order

    def _tile_rows(self, nhwc: Tensor, out: Tensor, top: int, bottom: int) -> None:
        """Output rows of tiles [top, bottom) of ``nhwc`` (padded to whole tiles) into ``out`` (NHWC)."""
        n, _, width, channels = nhwc.shape
        out_h, out_w, out_channels = out.shape[1:]
        t, m = self.tile, self.block
        rows, cols, cells = bottom - top, (width - t) // m + 1, t * t
        tiles = n * rows * cols
        s = nhwc.stride()
        windows = nhwc.as_strided(
            (t, t, n, rows, cols, channels),
            (s[1], s[2], s[0], m * s[1], m * s[2], s[3]),
            nhwc.storage_offset() + m * top * s[1],
        )
        gathered = _buffer("gathered", cells * tiles * channels).view(t, t, n, rows, cols, channels)
        gathered.copy_(windows)
        spectra = _buffer("spectra", cells * tiles * channels).view(cells, tiles * channels)
        torch.mm(self.kron_in, gathered.view(cells, -1), out=spectra)
        products = _buffer("products", cells * tiles * out_channels).view(cells, tiles, out_channels)
        for cell, (spectrum, weight) in enumerate(zip(spectra.view(cells, tiles, channels), self.packed)):
            products[cell] = weight(spectrum, self.bias if cell == self.bias_cell else None)
        blocks = _buffer("blocks", m * m * tiles * out_channels).view(m * m, tiles * out_channels)
        torch.mm(self.kron_out, products.view(cells, -1), out=blocks)
        blocks.clamp_(min=0)
        grid = blocks.view(m, m, n, rows, cols, out_channels).permute(2, 3, 0, 4, 1, 5)
        first, last = m * top, min(out_h, m * bottom)
        if last - first == m * rows and out_w == m * cols:
            out[:, first:last].view(n, rows, m, cols, m, out_channels).copy_(grid)
        else:  # a partial block at the bottom or right edge
            whole = _buffer("whole", tiles * m * m * out_channels).view(n, rows, m, cols, m, out_channels)
            whole.copy_(grid)
            out[:, first:last].copy_(whole.view(n, m * rows, m * cols, out_channels)[:, : last - first, :out_w])

    def unfused(self) -> tuple[nn.Conv2d, nn.ReLU]:
        """The two layers again (see fcnseg.inference.fastpath.unfuse_conv_relu)."""
        weight = self.conv_weight()
        out_channels, in_channels, kernel = weight.shape[0], weight.shape[1], weight.shape[-1]
        conv = nn.Conv2d(in_channels, out_channels, kernel, 1, self.padding, device=weight.device)
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(self.bias)
        return conv, nn.ReLU(inplace=self.relu_inplace)

    # state dicts keep the convolution's layout ("weight", "bias"): a prepared model saves like the original
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.keep_weight:
            destination[prefix + "weight"] = self.conv_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        weight = state_dict.get(prefix + "weight")
        if not self.keep_weight:  # no parameter of that name: take it here
            state_dict = {k: v for k, v in state_dict.items() if k != prefix + "weight"}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if weight is None:
            missing.append(prefix + "weight")
            return
        with torch.no_grad():
            self._pack(self.weight if self.keep_weight else weight)

    def extra_repr(self) -> str:
        k, m = self.kernel_size[0], self.block
        return f"{self.in_channels} -> {self.out_channels}, {k}x{k} by Winograd F({m}x{m}, {k}x{k}), padding={self.padding}, + ReLU"
