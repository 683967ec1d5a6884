"""Small building blocks shared by the models: bilinear upsampling, score layers, crops and padding."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scaled(channels: int, width: float) -> int:
    """A channel count multiplied by the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def bilinear_kernel(kernel_size: int) -> Tensor:
    """A (k, k) filter that, used in a transposed convolution with stride ceil(k/2), interpolates bilinearly.

    For k = 2 * factor this is the reference's upsampling filter: weights
    (1 - |i - c| / factor) * (1 - |j - c| / factor) around the centre c.
    """
    ramp = bilinear_ramp(kernel_size)
    return torch.outer(ramp, ramp).float()


def bilinear_ramp(kernel_size: int) -> Tensor:
    """The one-axis factor of :func:`bilinear_kernel` (float64, length k): the kernel is its outer
    product with itself."""
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    # on the CPU, also where modules are being built on the meta device: a constant, cheap there
    return 1 - (torch.arange(kernel_size, dtype=torch.float64, device="cpu") - centre).abs() / factor


# Up to this many input cells a side, a fixed bilinear upsampler runs as two matrix products; beyond,
# as a per-class transposed convolution (the products' cost grows with the cube of the side).
SEPARABLE_MAX_CELLS = 96


@functools.lru_cache(maxsize=32)
def _transposed_matrix(cells: int, stride: int, kernel_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ((cells - 1) * stride + k, cells) matrix of a 1-D transposed convolution by the bilinear
    ramp: input cell i adds ramp[t] of itself to output cell i * stride + t."""
    ramp = bilinear_ramp(kernel_size)
    matrix = torch.zeros((cells - 1) * stride + kernel_size, cells, dtype=torch.float64)
    for i in range(cells):
        matrix[i * stride : i * stride + kernel_size, i] = ramp
    return matrix.to(dtype=dtype, device=device)


class BilinearUpsample(nn.Module):
    """Transposed convolution by ``factor`` (kernel 2*factor, no padding, no bias), bilinear-initialised.

    ``kernel_size`` overrides the kernel (the reference FCN-AlexNet's 63x63 upsampler by 32).

    The weight has shape (C, C, k, k) with a bilinear filter on the diagonal (class c upsamples into
    class c only), as in the reference. With ``learnable=False`` the weight is a buffer: it stays
    bilinear whatever the optimiser does, and is still saved in the state dict under the same key.
    The output has (n - 1) * factor + 2 * factor cells; the crop that aligns it is computed by
    fcnseg.models.geometry from ``kernel_size``, ``stride`` and ``padding``.
    """

    transposed = True

    def __init__(self, channels: int, factor: int, learnable: bool, kernel_size: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size or 2 * factor, factor, 0
        self.learnable = learnable
        # computed on the CPU, then put where modules are being built (the meta device: shapes only)
        weight = torch.zeros(channels, channels, self.kernel_size, self.kernel_size, device="cpu")
        index = torch.arange(channels, device="cpu")
        weight[index, index] = bilinear_kernel(self.kernel_size)
        weight = weight.to(torch.get_default_device())
        if learnable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)
        self._bilinear_key: tuple | None = None  # see is_bilinear
        self._bilinear = False

    def forward(self, x: Tensor) -> Tensor:
        if tracing() or (self.weight.requires_grad and torch.is_grad_enabled()) or not self.is_bilinear():
            return F.conv_transpose2d(x, self.weight, stride=self.stride)
        h, w = x.shape[-2:]
        if max(h, w) > SEPARABLE_MAX_CELLS:
            index = torch.arange(self.weight.shape[0], device=self.weight.device)
            return F.conv_transpose2d(x, self.weight[index, index].unsqueeze(1), stride=self.stride, groups=len(index))
        args = (self.stride, self.kernel_size, x.dtype, x.device)
        return _transposed_matrix(h, *args) @ x.contiguous() @ _transposed_matrix(w, *args).T

    def is_bilinear(self) -> bool:
        """Whether the weight is exactly :func:`bilinear_kernel` on the diagonal and zero elsewhere (as
        built, and as long as a fixed upsampler's loaded weights or a learnable one's training keep it).

        Then every class upsamples on its own and the filter is separable, so a fixed upsampler (or a
        learnable one where no gradient is asked for) computes the same sums, in another order, as
        two matrix products over the rows and the columns, which skip the C x C weight's zeros:
        forward + backward of the demo's 8x upsampler (8 x 6 x 12 x 12 in, channels_last, cropped),
        fp32 under the AVX2 caps: 3.4-3.6 ms as the transposed convolution, 0.42-0.45 ms as products.
        The answer is cached until the weight changes (a new tensor, or an in-place write)."""
        weight = self.weight
        if weight.is_meta:
            return False
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._bilinear_key != key:
            expected = torch.zeros_like(weight)
            index = torch.arange(weight.shape[0], device=weight.device)
            expected[index, index] = bilinear_kernel(self.kernel_size).to(weight)
            self._bilinear = bool(torch.equal(weight.detach(), expected))
            self._bilinear_key = key
        return self._bilinear

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, factor={self.stride}, {'learned' if self.learnable else 'fixed'}"


def score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A 1x1 convolution to class scores, zero-initialised (weights and bias) as in the reference."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def crop_like(x: Tensor, offset: int, like: Tensor) -> Tensor:
    """``x`` cropped to ``like``'s height and width, starting ``offset`` cells from its top-left.

    Uses tensor sizes (not Python ints taken early), so tracing and ONNX export keep H and W dynamic.
    """
    return x[:, :, offset : offset + like.shape[-2], offset : offset + like.shape[-1]]


def fuse(upsampled: Tensor, skip: Tensor, offset: int) -> Tensor:
    """Sum two score maps of equal stride; the one that starts earlier is cropped to the other.

    ``offset`` = crop_offset(skip, upsampled): positive crops ``skip`` (the reference's case),
    negative crops ``upsampled`` (the "same" geometry, where the upsampler overhangs by a cell).
    """
    if offset >= 0:
        return upsampled + crop_like(skip, offset, upsampled)
    return crop_like(upsampled, -offset, skip) + skip


def pad_to_multiple(x: Tensor, multiple: int, value: float = 0.0) -> Tensor:
    """Pad the bottom and right of ``x`` so H and W are multiples of ``multiple`` (no-op for 1)."""
    if multiple == 1:
        return x
    height, width = x.shape[-2], x.shape[-1]
    return F.pad(x, (0, (-width) % multiple, 0, (-height) % multiple), value=value)


def mirror_indices(
    length: int | Tensor, before: int, after: int | Tensor, device: torch.device | None = None
) -> Tensor:
    """Indices into ``range(length)`` that extend it by ``before``/``after`` positions by mirroring at
    each end without repeating the edge (numpy's "reflect"), folding again as often as needed, so an
    extension may be longer than ``length`` itself (a 1-pixel line repeats its pixel).

    Written as tensor arithmetic with no branch on ``length``, so a traced forward (ONNX export, where
    sizes are 0-dim tensors) keeps the extension dynamic: a 1-pixel length folds with period 1.
    """
    positions = torch.arange(-before, length + after, device=device)
    period = (2 * (length - 1)).clamp(min=1) if isinstance(length, Tensor) else max(1, 2 * (length - 1))
    folded = positions.remainder(period)
    return torch.where(folded < length, folded, period - folded)


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """``x`` (..., H, W) extended by mirroring at its borders (see :func:`mirror_indices`): U-Net's
    extrapolation of the missing context (Ronneberger et al. 2015, Fig. 2)."""
    height, width = x.shape[-2], x.shape[-1]
    rows = mirror_indices(height, top, bottom, x.device)
    cols = mirror_indices(width, left, right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


_SYMBOLIC = contextvars.ContextVar("fcnseg_symbolic_forward", default=False)


def tracing() -> bool:
    """Whether the forward is being recorded (ONNX export, torch.jit trace, torch.compile/export), where
    a branch on a tensor's size would be baked into the graph for every later size, or run on fake
    tensors (:func:`symbolic`). Layers with a faster equivalent then run their plain form."""
    return _SYMBOLIC.get() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


@contextlib.contextmanager
def symbolic():
    """Forwards inside run every layer's plain form: for passes over fake or meta tensors (FLOP counts),
    where a data-dependent choice cannot be made and the architecture's own operations are wanted."""
    token = _SYMBOLIC.set(True)
    try:
        yield
    finally:
        _SYMBOLIC.reset(token)


class SameConv2d(nn.Conv2d):
    """A stride-1 convolution with odd kernel and zero "same" padding (k // 2) that, on inputs smaller
    than the kernel's reach, skips the taps that can only ever meet padding.

    With padding p and an input H cells high, output row i reads input row i + t - p through tap t,
    so only taps p - (H - 1) .. p + (H - 1) ever touch the image. fc6 under the `same` geometry is a
    7x7 convolution over pool5, which is 3x3 for the demo's 96x96 images: the 5x5 middle of the kernel
    computes the same outputs and the same gradients (the skipped taps' gradient is exactly zero) with
    half the FLOPs. Larger inputs, and any traced or exported forward, run the plain convolution.
    The weight keeps its full shape and its state-dict key, and its plain (N, C, H, W) memory order
    whatever ``.to(memory_format=...)`` asks (the slice is copied once a step either way): a
    channels_last weight made autograd and the fused optimizer copy its full 7x7 gradient between
    layouts on every step. The demo's bf16 step natively: 28.8-29.6 -> 25.2-27.0 ms (four alternating
    processes); the fp32 step under the AVX2 caps did not change measurably (33.5 against 33.8 ms).
    """

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.weight.dim() == 4 and not self.weight.is_contiguous():
            self.weight.data = self.weight.data.contiguous()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if tracing():
            return super().forward(x)
        ph, pw = self.padding
        ch, cw = max(0, ph - x.shape[-2] + 1), max(0, pw - x.shape[-1] + 1)
        if not (ch or cw):
            return super().forward(x)
        if self.groups == 1 and x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad:
            return _WeightGradAsMatmulConv.apply(x, self.weight, self.bias, (ch, cw), (ph - ch, pw - cw))
        return F.conv2d(x, _live_taps(self.weight, (ch, cw), x), self.bias, 1, (ph - ch, pw - cw), 1, self.groups)


def _live_taps(weight: Tensor, crop: tuple[int, int], x: Tensor) -> Tensor:
    """The middle of ``weight`` without ``crop`` taps at each edge, in ``x``'s memory order (as the
    convolution takes it)."""
    (ch, cw), (kh, kw) = crop, weight.shape[-2:]
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return weight[:, :, ch : kh - ch, cw : kw - cw].contiguous(memory_format=layout)


class _WeightGradAsMatmulConv(torch.autograd.Function):
    """A stride-1 convolution over a map of a few cells whose weight gradient is one matrix product.

    oneDNN's CPU backward-weights kernel is slow on such maps: fc6 of the demo (8 x 64 x 3 x 3 in, its
    5x5 live taps, 512 out) took 2.6 ms fp32 under the AVX2 caps, where the product of the output
    gradient (N*H*W x O) and the input's unfolded taps (N*H*W x C*kh*kw) takes 0.66 ms (bf16 natively:
    0.52 against 0.31 ms). The forward and the input gradient stay oneDNN's, which are fast here. The
    whole fc6 layer, forward + backward (medians of 300, alternating processes): 4.2-4.4 -> 3.1 ms fp32
    under the caps; bf16 natively 4.1-5.2 -> 2.6-3.8 ms (both vary with the allocator's page faults
    for the 7x7 gradient).
    The full kernel's gradient is the live taps' padded with zeros, in one pass (autograd's two
    slices took two). Under autocast the backward runs in the dtype the forward's convolution ran in."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, crop: tuple[int, int], padding: tuple[int, int]):
        live = _live_taps(weight, crop, x)
        out = F.conv2d(x, live, bias, 1, padding)
        ctx.save_for_backward(x.to(out.dtype), live.to(out.dtype))
        ctx.crop, ctx.padding = crop, padding
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1, [True, False, False]
            )[0].to(ctx.dtypes[0])
        n, o, h, w = grad_out.shape
        rows = grad_out.permute(0, 2, 3, 1).reshape(n * h * w, o)  # a view where grad_out is channels_last
        if ctx.needs_input_grad[1]:
            taps = F.unfold(x, weight.shape[-2:], padding=ctx.padding)  # (N, C*kh*kw, H*W)
            grad_weight = (rows.t() @ taps.transpose(1, 2).reshape(n * h * w, -1)).view(weight.shape)
            (ch, cw) = ctx.crop
            grad_weight = F.pad(grad_weight.to(ctx.dtypes[1]), (cw, cw, ch, ch))
        if ctx.dtypes[2] is not None and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0, dtype=torch.promote_types(rows.dtype, torch.float32)).to(ctx.dtypes[2])
        return grad_x, grad_weight, grad_bias, None, None


class Dropout(nn.Dropout):
    """nn.Dropout (same probability, scaling and results in distribution) that draws its mask with
    ``torch.rand`` on CPU: ``bernoulli_`` there costs about 9 ns an element, a uniform draw and a
    comparison about a third of that. The demo's two dropouts over fc6 and fc7 (8 x 512 x 3 x 3),
    forward + backward, fp32 under the AVX2 caps: 0.38 -> 0.12 ms each. A different draw from the
    same generator, so a seeded run is as reproducible as before (with other masks)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.p >= 1 or tracing():
            return super().forward(x)
        keep = torch.rand_like(x, dtype=torch.float32).ge_(self.p).mul_(1.0 / (1.0 - self.p)).to(x.dtype)
        return x.mul_(keep) if self.inplace else x * keep


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers, state-dict keys and results) that trains faster on
    channels_last CPU inputs with fewer than 16 channels.

    PyTorch's channels_last batch-norm kernels run 2-7x slower on 4, 8 or 12 channels than on 16
    (CPU, fp32 and bf16, with and without AVX512: the demo's first block is 8 channels at 96x96).
    Here the (N*H*W, C) rows are viewed as (N*H*W / r, r*C), about 512 wide, so every pass is a
    plain vectorised row operation, with the statistics folded back to C channels; the backward is
    the closed form. Forward + backward of one 8-channel 96x96 layer at batch 8: 2.4 -> 1.3 ms fp32
    under the AVX2 caps. The demo's whole step (medians of six alternating processes): fp32 under the
    AVX2 caps 31.4 -> 28.4 ms; bf16 natively 24.0 against 24.0 ms, unchanged. Everything else (eval,
    other layouts, wider layers, tracing) is nn.BatchNorm2d's own.
    """

    def forward(self, x: Tensor) -> Tensor:
        rows = x.shape[0] * x.shape[2] * x.shape[3] if x.dim() == 4 else 0
        if not (
            self.training
            and rows > 1
            and x.shape[1] < 16
            and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last)
            and not tracing()
        ):
            return super().forward(x)
        out, mean, var = _NarrowChannelsLastBatchNorm.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * (rows / (rows - 1))).to(self.running_var.dtype), factor)
        return out


class _NarrowChannelsLastBatchNorm(torch.autograd.Function):
    """Batch norm of a channels_last (N, C, H, W) tensor through a wide row view; statistics in
    float32 (or the input's wider type), two passes (mean, then centred variance)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        n, c, h, w = x.shape
        rows = n * h * w
        r = math.gcd(rows, max(1, 512 // c))  # rows folded side by side: (rows / r, r * c)
        acc = torch.promote_types(x.dtype, torch.float32)
        wide = x.permute(0, 2, 3, 1).reshape(rows // r, r * c).to(acc)
        mean = wide.sum(0).view(r, c).sum(0) / rows
        centred = wide - mean.repeat(r)
        var = centred.square().sum(0).view(r, c).sum(0) / rows
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else weight.to(acc) * invstd
        shift = torch.zeros_like(scale) if bias is None else bias.to(acc)
        out = torch.empty_like(x)  # channels_last, the input's dtype (bf16 under autocast, as nn's)
        torch.addcmul(shift.repeat(r), centred, scale.repeat(r), out=out.permute(0, 2, 3, 1).view(rows // r, r * c))
        ctx.save_for_backward(centred, invstd, scale)
        ctx.geometry = (n, c, h, w, r)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_mean, _grad_var):
        centred, invstd, scale = ctx.saved_tensors
        n, c, h, w, r = ctx.geometry
        rows = n * h * w
        grad = grad_out.permute(0, 2, 3, 1).reshape(rows // r, r * c).to(centred.dtype)
        grad_bias = grad.sum(0).view(r, c).sum(0)
        grad_centred = (grad * centred).sum(0).view(r, c).sum(0)  # = grad_weight / invstd
        # dx = scale * (dy - mean(dy) - centred * invstd^2 * mean(dy * centred))
        dx = torch.addcmul((-scale * grad_bias / rows).repeat(r), grad, scale.repeat(r))
        dx.addcmul_(centred, (-scale * invstd * invstd * grad_centred / rows).repeat(r))
        dx = dx.to(grad_out.dtype).view(n, h, w, c).permute(0, 3, 1, 2)
        grad_weight = grad_centred * invstd if ctx.needs_input_grad[1] else None
        grad_bias = grad_bias if ctx.needs_input_grad[2] else None
        return dx, grad_weight, grad_bias, None


def is_plain_conv(module: nn.Module) -> bool:
    """Whether ``module`` computes exactly nn.Conv2d's function from its own attributes (nn.Conv2d or
    SameConv2d, not a subclass with other maths): the layers inference rewrites may replace."""
    return type(module) in (nn.Conv2d, SameConv2d)


class LocalResponseNorm(nn.LocalResponseNorm):
    """Caffe's cross-channel LRN, computed in float32 whatever the input's dtype (PyTorch's CPU
    kernel has no bfloat16 form, and the sum of squares wants the precision); returns the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def to_plain_torch_layers(model: nn.Module) -> nn.Module:
    """``model``, in place, with this module's faster layer forms swapped for the torch.nn layers they
    equal, same weights and mode: SameConv2d -> nn.Conv2d, BatchNorm2d -> nn.BatchNorm2d, Dropout ->
    nn.Dropout, BilinearUpsample -> nn.ConvTranspose2d (no bias; a fixed one's weight does not train).
    For benchmarks that time what a plain PyTorch user runs, and tests that compare against it."""

    def twin(child: nn.Module) -> nn.Module | None:
        if type(child) is SameConv2d:
            return nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, padding=child.padding)
        if type(child) is BatchNorm2d:
            return nn.BatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
        if type(child) is Dropout:
            return nn.Dropout(child.p, child.inplace)
        if type(child) is BilinearUpsample and not child.padding:
            classes = child.weight.shape[0]
            plain = nn.ConvTranspose2d(classes, classes, child.kernel_size, child.stride, bias=False)
            plain.weight.requires_grad_(child.learnable)
            return plain
        return None

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            plain = twin(child)
            if plain is None:
                continue
            state = child.state_dict()
            floats = [t for t in state.values() if t.is_floating_point()]
            if floats:  # the child's device and dtype before its values are copied in
                plain = plain.to(device=floats[0].device, dtype=floats[0].dtype)
            plain.load_state_dict(state)
            setattr(parent, name, plain.train(child.training))
    return model
