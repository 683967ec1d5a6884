"""The CPU fast path: bfloat16 weights + channels_last + inference_mode where the CPU has native bf16,
with the huge fc6/fc7 convolutions computed as one GEMM on a weight packed once.

On CPUs with AVX512-BF16 or AMX (recent Xeon and EPYC) oneDNN runs bf16 convolutions several times
faster than fp32. On other CPUs emulated bf16 is slower than fp32, so the fast path stays off there
and the model runs in fp32 with the same layout and exact rewrites, plus Winograd F(4x4, 3x3) for
the wide 3x3 convolutions (:mod:`fcnseg.inference.winograd`; see :func:`prepare_model`).
``FCNSEG_CPU_ISA`` (avx2, avx512, avx512_vnni, avx512_bf16, amx) makes fcnseg treat the CPU as no
better than that class, to run and measure a lesser CPU's path.

Measured on FCN-8s VGG16, 500x500, batch 1, 2 EPYC cores with AVX512-BF16 (no AMX): 2.8x ("caffe")
and 2.9x ("same") faster than the plain fp32 forward on an idle machine, 2.2-2.5x while another
job shares the cores; 99.55% argmax agreement with fp32 (random weights, so many near-ties).
:class:`Compiled` (opt-in) reaches 3.2-3.3x under load.
"""

from __future__ import annotations

import copy
import platform

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.devices import (  # noqa: F401 (ISA_ENV, cpu_flags, cpu_isa: used by the benchmark)
    ISA_ENV,
    cpu_bf16_flags,
    cpu_flags,
    cpu_isa,
    fast_bf16,
    onednn_cap_allows_bf16,
)
from fcnseg.inference import padcache, winograd
from fcnseg.inference.packed import PackedWeight
from fcnseg.inference.winograd import WinogradConvReLU
from fcnseg.models.layers import BilinearUpsample, is_plain_conv


def fast_path_supported() -> bool:
    """True when bf16 autocast on this CPU is expected to beat fp32."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    # the one bf16 decision (devices.fast_bf16: CPU flags after $FCNSEG_CPU_ISA, and a oneDNN cap)
    return fast_bf16(torch.device("cpu")) and torch.backends.mkldnn.is_available()


def fast_path_reason() -> str:
    """A short phrase saying why the fast path is (not) available, for logs."""
    flags = cpu_bf16_flags()
    if fast_path_supported():
        return f"CPU has {'+'.join(flags)}"
    if flags and not onednn_cap_allows_bf16():
        return f"CPU has {'+'.join(flags)} but ONEDNN_MAX_CPU_ISA caps oneDNN below bf16"
    return "CPU lacks native bf16 (amx_bf16/avx512_bf16)"


# Sub-networks that compute features, never class scores: a layer there whose width happens to equal
# the class count (tiny widths) is not part of the score head.
FEATURE_EXTRACTORS = ("backbone.", "encoder.", "decoder.")


def _is_score_module(module: nn.Module, num_classes: int) -> bool:
    """A leaf layer that outputs class scores: score convolutions and score upsamplers."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or list(module.children()):
        return False
    out_dim = 1 if getattr(module, "transposed", False) else 0  # ConvTranspose weights are (in, out, k, k)
    return weight.shape[out_dim] == num_classes


class GemmConv2d(nn.Module):
    """A stride-1 convolution with a huge weight (VGG16's fc6 as a 7x7 convolution, fc7) computed as
    im2col (one copy of the channels_last input's kh x kw x in windows) + one matrix product with the
    weight packed once for oneDNN in that order (:class:`fcnseg.inference.packed.PackedWeight`).

    Such layers run on few cells (16x16 at 500x500) with a weight far larger than their input, where
    oneDNN's convolution re-lays out the weight on every call; the GEMM reads the packed weight as
    is (VGG16 fc6 at 500x500 in bf16 on 2 AVX512-BF16 cores: about 130 ms as a convolution, 69-77 ms
    as ``unfold`` + ``addmm`` on a row-major weight, 56-59 ms packed, with the im2col as one copy of
    the channels_last input's windows). Output rows are computed ``rows_per_chunk`` at a time so the
    unfolded input stays bounded on big inputs.
    """

    def __init__(self, conv: nn.Conv2d, rows_per_chunk: int = 32) -> None:
        super().__init__()
        self.kernel_size, self.padding = conv.kernel_size, conv.padding
        self.stride, self.dilation = conv.stride, conv.dilation
        self.out_channels = conv.out_channels
        self.rows_per_chunk = rows_per_chunk
        weight = conv.weight.detach()
        self.packed = PackedWeight(self._cell_major(weight))
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        self.register_buffer("bias", bias.clone())

    @staticmethod
    def applies_to(module: nn.Module, min_weight: int = 1 << 24) -> bool:
        """A plain (stride 1, undilated, ungrouped, zero-padded) conv with at least ``min_weight``
        weights: the layers where weight traffic, not arithmetic, sets the speed."""
        return (
            is_plain_conv(module)
            and module.weight.numel() >= min_weight
            and module.groups == 1
            and module.stride == (1, 1)
            and module.dilation == (1, 1)
            and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)
            and module.padding[0] == module.padding[1]
        )

    @staticmethod
    def _cell_major(weight: torch.Tensor) -> torch.Tensor:
        """(out, in, kh, kw) -> (out, kh * kw * in): the order of a channels_last input's windows."""
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), pad = self.kernel_size, self.padding[0]
        nhwc = x.permute(0, 2, 3, 1).contiguous()  # a view for channels_last input
        if pad:
            nhwc = F.pad(nhwc, (0, 0, pad, pad, pad, pad))
        n, height, width, channels = nhwc.shape
        out_h, out_w = height - kh + 1, width - kw + 1
        s = nhwc.stride()
        chunks = []
        for top in range(0, out_h, self.rows_per_chunk):
            rows = min(self.rows_per_chunk, out_h - top)
            # im2col in one copy: each output cell's kh x kw x in window, read in memory order
            windows = nhwc.as_strided(
                (n, rows, out_w, kh, kw, channels),
                (s[0], s[1], s[2], s[1], s[2], s[3]),
                nhwc.storage_offset() + top * s[1],
            )
            cells = windows.reshape(-1, kh * kw * channels)  # a view for 1x1 kernels
            chunks.append(self.packed(cells, self.bias).view(n, rows, out_w, -1))
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
        return out.permute(0, 3, 1, 2)  # (n, out, h, w) in channels_last memory order

    def extra_repr(self) -> str:
        return f"{self.packed.shape[1]} -> {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding}"

    def conv_weight(self) -> torch.Tensor:
        """The (out, in, kh, kw) convolution weight the packed one came from."""
        weight = self.packed.dense().reshape(self.out_channels, *self.kernel_size, -1)
        return weight.permute(0, 3, 1, 2).contiguous()

    def _apply(self, fn, recurse=True):  # .to(dtype), .float(): the packed weight too (it is no buffer)
        super()._apply(fn, recurse)
        self.packed = self.packed.apply(fn)
        return self

    # state dicts keep the convolution's layout ("weight", "bias"): a prepared model saves, exports
    # and loads like the original one
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.conv_weight() if keep_vars else self.conv_weight().detach()
        destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        if weight is None or bias is None:
            missing_keys.extend(prefix + k for k in ("weight", "bias") if state_dict.get(prefix + k) is None)
            return
        with torch.no_grad():
            self.packed = PackedWeight(self._cell_major(weight).to(self.packed.dtype), self.packed.wants_packing)
            self.bias.copy_(bias)


def gemm_large_convs(model: nn.Module, min_weight: int = 1 << 24) -> nn.Module:
    """Swap every convolution of ``model`` that :meth:`GemmConv2d.applies_to` for its GEMM form (in place)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if GemmConv2d.applies_to(child, min_weight):
                setattr(parent, name, GemmConv2d(child))
    return model


class ConvReLU(nn.Module):
    """A convolution and the ReLU after it as one oneDNN call (the ReLU applied as the output is
    written, no second pass over a map that is 125 MB at conv1 in Caffe geometry); the same values
    as the two layers. Measured under ONEDNN_MAX_CPU_ISA=AVX2 on VGG16's trunk (300x300, 2 threads,
    CPU time on a busy machine): 4-11% less than channels_last convolution + ReLU. The ReLU it
    absorbs becomes nn.Identity; state dicts keep the convolution's keys."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.weight = nn.Parameter(conv.weight.detach(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.relu_inplace = False

    def unfused(self) -> tuple[nn.Conv2d, nn.ReLU]:
        """The two layers again (the bf16 path, which finds the first convolution by its type)."""
        out_channels, in_per_group = self.weight.shape[:2]
        conv = nn.Conv2d(
            in_per_group * self.groups,
            out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            conv.bias.copy_(self.bias)
        return conv, nn.ReLU(inplace=self.relu_inplace)

    @staticmethod
    def applies_to(conv: nn.Module, after: nn.Module) -> bool:
        return (
            is_plain_conv(conv)
            and type(after) is nn.ReLU
            and conv.bias is not None
            and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple)
            and conv.weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
        )

    def forward(self, x: torch.Tensor, padding: tuple | None = None) -> torch.Tensor:
        padding = self.padding if padding is None else padding
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups))
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            self.weight,
            self.bias,
            list(padding),
            list(self.stride),
            list(self.dilation),
            self.groups,
            "relu",
            [],
            "",
        )

    def forward_unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution without its zero padding (the caller pads; see fcnseg.inference.padcache)."""
        return self.forward(x, padding=(0, 0))


def fuse_conv_relu(model: nn.Module) -> None:
    """Swap every convolution followed by a ReLU in a Sequential for a :class:`ConvReLU` (in place)."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for name, following in zip(names, names[1:]):
            if ConvReLU.applies_to(seq._modules[name], seq._modules[following]):
                seq._modules[name] = ConvReLU(seq._modules[name])
                seq._modules[name].relu_inplace = seq._modules[following].inplace
                seq._modules[following] = nn.Identity()


def unfuse_conv_relu(model: nn.Module) -> None:
    """Undo :func:`fuse_conv_relu` (in place)."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for name, following in zip(names, names[1:]):
            if (
                type(seq._modules[name]) in (ConvReLU, WinogradConvReLU)
                and type(seq._modules[following]) is nn.Identity
            ):
                seq._modules[name], seq._modules[following] = seq._modules[name].unfused()


def winograd_convs(model: nn.Module, min_channels: int) -> int:
    """Swap every 3x3 :class:`ConvReLU` and every 7x7 :class:`GemmConv2d` followed by a ReLU (VGG16's
    fc6) with at least ``min_channels`` channels in and out for its
    :class:`fcnseg.inference.winograd.WinogradConvReLU` form (in place); the number swapped."""
    swapped = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for name, following in zip(names, names[1:]):
            layer, after = seq._modules[name], seq._modules[following]
            if type(layer) is ConvReLU:
                weight, inplace = layer.weight, layer.relu_inplace
            elif type(layer) is GemmConv2d and type(after) is nn.ReLU:
                weight, inplace = layer.conv_weight(), after.inplace
            else:
                continue
            if WinogradConvReLU.applies_to(
                weight, layer.stride, layer.dilation, getattr(layer, "groups", 1), layer.padding, min_channels
            ):
                seq._modules[name] = WinogradConvReLU(weight, layer.bias, layer.padding, inplace)
                seq._modules[following] = nn.Identity()
                swapped += 1
    return swapped


def winograd_layers(model: nn.Module) -> dict[str, int]:
    """How many layers of ``model`` run by Winograd, per algorithm ("F(4x4,3x3)": 8, ...)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, WinogradConvReLU):
            name = f"F({m.block}x{m.block},{m.kernel_size[0]}x{m.kernel_size[0]})"
            counts[name] = counts.get(name, 0) + 1
    return counts


class PerClassUpsample(nn.Module):
    """A transposed convolution whose (C, C, k, k) weight is diagonal (class c feeds class c only,
    as every fixed bilinear upsampler's), run as C independent filters (groups=C): same result,
    C times less arithmetic (the 8x upsampler of FCN-8s at 500x500: about half the time)."""

    def __init__(self, upsampler: nn.Module) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = upsampler.kernel_size, upsampler.stride, upsampler.padding
        self.transposed = True
        index = torch.arange(upsampler.weight.shape[0])
        self.register_buffer("weight", upsampler.weight.detach()[index, index].unsqueeze(1).contiguous())

    @staticmethod
    def applies_to(module: nn.Module) -> bool:
        """A fcnseg BilinearUpsample (stride = kernel / 2, no padding) with a diagonal weight."""
        weight = getattr(module, "weight", None)
        if type(module) is not BilinearUpsample or weight.is_meta:
            return False
        return bool((weight * (1 - torch.eye(weight.shape[0], dtype=weight.dtype)[:, :, None, None])).eq(0).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, stride=self.stride, groups=self.weight.shape[0])

    # state dicts keep the upsampler's (C, C, k, k) layout: a prepared model saves like the original
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        classes = self.weight.shape[0]
        full = self.weight.new_zeros(classes, classes, *self.weight.shape[2:])
        index = torch.arange(classes)
        full[index, index] = self.weight[:, 0]
        destination[prefix + "weight"] = full

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing_keys.append(prefix + "weight")
            return
        index = torch.arange(weight.shape[0])
        with torch.no_grad():
            self.weight.copy_(weight[index, index].unsqueeze(1))


class SplitStemConv2d(nn.Module):
    """The first convolution, which sees the fp32 image, at near-fp32 accuracy for bf16's cost.

    Normalised 8-bit pixels do not fit bf16's 8-bit mantissa, so rounding the image loses about
    a grey level. Instead the image and the weight are split into a bf16 value and a bf16 remainder
    (x = x_hi + x_lo, w = w_hi + w_lo) and one bf16 convolution over the stacked channels
    [x_hi, x_lo, x_hi] with weights [w_hi, w_hi, w_lo] sums x*w but for the tiny x_lo*w_lo term,
    accumulating in fp32. The image has 3 channels, so this costs a few milliseconds, where an fp32
    convolution would cost ten times more.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.kernel_size = conv.kernel_size
        weight = conv.weight.detach().float()
        hi = weight.to(torch.bfloat16)
        lo = (weight - hi.float()).to(torch.bfloat16)
        self.register_buffer("weight", torch.cat([hi, hi, lo], dim=1).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(torch.bfloat16))

    @staticmethod
    def applies_to(module: nn.Module) -> bool:
        return is_plain_conv(module) and module.groups == 1 and module.padding_mode == "zeros"

    def forward(self, x: torch.Tensor, padding: int | tuple | None = None) -> torch.Tensor:
        x = x.float()
        hi = x.to(torch.bfloat16)
        lo = (x - hi.float()).to(torch.bfloat16)
        return F.conv2d(
            torch.cat([hi, lo, hi], dim=1),
            self.weight,
            self.bias,
            self.stride,
            self.padding if padding is None else padding,
            self.dilation,
        )

    def forward_unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution without its zero padding (the caller pads; see fcnseg.inference.padcache)."""
        return self.forward(x, padding=0)

    # state dicts keep the convolution's (out, in, k, k) fp32 weight: hi + lo
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        inputs = self.weight.shape[1] // 3
        destination[prefix + "weight"] = self.weight[:, :inputs].float() + self.weight[:, 2 * inputs :].float()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing_keys.append(prefix + "weight")
            return
        hi = weight.float().to(torch.bfloat16)
        with torch.no_grad():
            self.weight.copy_(torch.cat([hi, hi, (weight.float() - hi.float()).to(torch.bfloat16)], dim=1))
            if self.bias is not None and prefix + "bias" in state_dict:
                self.bias.copy_(state_dict[prefix + "bias"])


def _split_stem(model: nn.Module) -> bool:
    """Swap the first convolution (the one that sees the image) for a SplitStemConv2d; True if done."""
    path, stem = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if stem is None or not SplitStemConv2d.applies_to(stem):
        return False
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, SplitStemConv2d(stem))
    return True


def _per_class_upsamplers(model: nn.Module) -> None:
    """Swap every :meth:`PerClassUpsample.applies_to` upsampler of ``model`` for its grouped form."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if PerClassUpsample.applies_to(child):
                setattr(parent, name, PerClassUpsample(child))


class ResizeUpsample(nn.Module):
    """A fixed bilinear upsampler (kernel 2s, stride s, the reference's filter on the diagonal) as
    linear interpolation: in an exported graph, ONNX Resize instead of a transposed convolution.

    The transposed convolution puts input cell i at output s*i + s - 1/2; a half-pixel resize by s
    puts it at s*i + s/2 - 1/2. Padding the input with one zero cell on each side and dropping s/2
    outputs at each end gives the transposed convolution's output, its edges (where one input cell
    contributes) included, to fp32 rounding (tests). onnxruntime, FCN-8s' 8x upsampler at 500x500
    (21 x 70 x 70 in): 7.3 ms against 10.9 ms as a grouped ConvTranspose; the whole int8 model
    177-185 against 180-193 ms (four alternating processes each), scores within 5e-8.
    """

    def __init__(self, upsampler: nn.Module) -> None:
        super().__init__()
        self.factor = upsampler.stride

    @staticmethod
    def applies_to(module: nn.Module) -> bool:
        """A fcnseg BilinearUpsample with an even stride s, kernel 2s, and exactly the bilinear filter
        on its diagonal (a learned upsampler that training changed keeps its convolution)."""
        if type(module) is not BilinearUpsample or module.padding:
            return False
        factor, kernel = module.stride, module.kernel_size
        return factor % 2 == 0 and kernel == 2 * factor and module.is_bilinear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, edge = self.factor, self.factor // 2
        y = F.interpolate(F.pad(x, (1, 1, 1, 1)), scale_factor=s, mode="bilinear", align_corners=False)
        return y[:, :, edge:-edge, edge:-edge]


def with_export_upsamplers(model: nn.Module) -> nn.Module:
    """``model`` itself if none of its upsamplers has a cheaper exact form, else a copy (for export)
    where fixed bilinear upsamplers are :class:`ResizeUpsample` and other diagonal ones run grouped
    (an ONNX export has Resize, or ConvTranspose with group = classes: the int8 model's 8x upsampler
    of FCN-8s at 500x500 took about 70 ms dense, about 11 ms grouped, about 7 ms as Resize)."""
    if not any(ResizeUpsample.applies_to(m) or PerClassUpsample.applies_to(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if ResizeUpsample.applies_to(child):
                setattr(parent, name, ResizeUpsample(child))
    _per_class_upsamplers(model)
    return model


def _inputs_to_float(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)


def prepare_model(
    model: nn.Module,
    fast: bool,
    num_classes: int | None = None,
    pad_constants: bool = True,
    winograd_min_channels: int | None = None,
    use_winograd: bool = True,
) -> nn.Module:
    """Put ``model`` (in place) in eval mode and channels_last; for the fast path convert it to bf16.

    Both paths (exact rewrites, no rounding): convolutions with huge weights (VGG16's fc6 and fc7)
    become :class:`GemmConv2d` (packed weight) and upsamplers with a diagonal weight
    :class:`PerClassUpsample`. On a CPU without native bf16 this fp32 path is the default; measured
    under ONEDNN_MAX_CPU_ISA=AVX2 (FCN-8s, 300x300, 2 threads, CPU time on a busy machine): 1.2x less
    work than the plain NCHW forward, channels_last contributing most of it.

    ``use_winograd`` (fp32 path only): 3x3 convolutions + ReLU and 7x7 ones (fc6) with at least
    ``winograd_min_channels`` channels in and out (None: winograd.MIN_CHANNELS, 256) run by Winograd's
    F(4x4, 3x3) and F(2x2, 7x7) (:mod:`fcnseg.inference.winograd`): about 1e-5 of the largest output
    from the direct convolution, 4x and 3x fewer multiplications.

    ``pad_constants`` (both paths): a Caffe-geometry trunk computes the activations that depend only
    on its 100-pixel zero pad once per input size (:mod:`fcnseg.inference.padcache`), same outputs.

    The class-score layers (score convolutions, upsamplers, skip fusions) stay in fp32: they cost
    almost nothing, and bf16's 8-bit mantissa there would turn close scores into argmax flips. The
    first convolution takes the fp32 image at near-fp32 accuracy (:class:`SplitStemConv2d`).
    Converting the weights once beats autocast, which re-casts all weights on every forward.
    """
    model.eval()
    if num_classes:
        _per_class_upsamplers(model)
    padcache.uninstall(model)  # prepared before: the cache would run the layers it saw then
    unfuse_conv_relu(model)  # prepared for fp32 before: the layers as they were
    if not fast:  # fp32 everywhere: the same layout and the same exact rewrites, plus Winograd
        model.to(memory_format=torch.channels_last)
        gemm_large_convs(model)
        fuse_conv_relu(model)
        if use_winograd:
            winograd_convs(model, winograd.MIN_CHANNELS if winograd_min_channels is None else winograd_min_channels)
        if pad_constants:
            padcache.install(model)
        return model
    head = [
        m
        for name, m in model.named_modules()
        if num_classes
        and not name.startswith(FEATURE_EXTRACTORS)
        and (_is_score_module(m, num_classes) or isinstance(m, PerClassUpsample))
    ]
    fp32_states = {m: {k: v.clone() for k, v in m.state_dict().items()} for m in head}
    if getattr(model, "fast_input_dtype", None) is None:  # not prepared before
        model.fast_input_dtype = torch.float32 if _split_stem(model) else torch.bfloat16
    model.to(torch.bfloat16, memory_format=torch.channels_last)
    gemm_large_convs(model)
    for module, state in fp32_states.items():
        module.float()
        module.load_state_dict(state)  # the fp32 weights themselves, not their bf16 rounding
        if not getattr(module, "_fp32_head", False):  # one hook, even if prepared twice
            module.register_forward_pre_hook(_inputs_to_float)
            module._fp32_head = True
    if pad_constants:
        padcache.install(model)
    return model


class Compiled(nn.Module):
    """``model`` through torch.compile with inductor weight freezing (prepacked weights, fused
    conv + ReLU). The first call per input shape compiles (tens of seconds), so it pays off for
    many same-size images or tiled large images, whose tiles all have the tile's shape."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        padcache.uninstall(model)  # dynamo traces the plain forward; the cache is Python-side state
        for module in model.modules():  # and plain weights (inductor packs them its own way)
            if isinstance(getattr(module, "packed", None), PackedWeight):
                module.packed = module.packed.plain()
        self.model = model
        self.fast_input_dtype = getattr(model, "fast_input_dtype", torch.bfloat16)
        self.compiled = torch.compile(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


def run_model(model: nn.Module, x: torch.Tensor, fast: bool, forward=None) -> torch.Tensor:
    """Forward a normalised float batch through a model from :func:`prepare_model`; float32 scores.
    ``forward``: the model's method to call (default: the model itself, e.g. ``model.forward_valid``)."""
    with torch.inference_mode():
        dtype = getattr(model, "fast_input_dtype", torch.bfloat16) if fast else x.dtype
        return (forward or model)(x.to(dtype, memory_format=torch.channels_last)).float()
