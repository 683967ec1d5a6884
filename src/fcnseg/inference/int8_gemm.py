"""The int8 model's huge layers (VGG16's fc6 and fc7) as oneDNN integer matrix products.

onnxruntime runs them as QLinearConv at about 40% of the CPU's int8 peak (FCN-8s at 500x500 on 2
EPYC cores with AVX512-VNNI: fc6 about 67 ms, fc7 about 7 ms). ``torch._int_mm`` (oneDNN, s8 x s8
-> s32) computes the same integer sums at about 800 GMAC/s there (fc6: 31-33 ms). On CPUs without
VNNI (AVX2 only) onnxruntime's u8 x s8 kernels for the 7-bit weights stay (:func:`wanted`).

Same result as onnxruntime, bit for bit: a layer of the QDQ graph (DequantizeLinear -> Conv ->
QuantizeLinear, the ReLU folded into the output's zero point as onnxruntime's QLinearConv does) is

    q = clamp(round_half_even(float32(sum (x - zx) w + bias_q) * (sx * sw_c / sy)) + zy, 0, 255)

where the sum is exact in int32: the uint8 input shifted to int8 (x - 128) and the difference
``(128 - zx) * sum w`` added back per output channel, with the int32 bias. The scale is computed in
float32 in onnxruntime's order ((sx * sw_c) / sy). Tests compare the maps with onnxruntime's.

Used by :mod:`fcnseg.inference.int8_padcache`: after a per-size head, the chain of such layers after
the trunk's last pooling runs here, and the rest graph starts from its output map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fcnseg.devices import cpu_flags

# weights from which a layer runs here: the layers where onnxruntime is far from the peak (VGG16's
# fc6 has 102M weights, fc7 16.8M; conv5 2.4M, which onnxruntime runs well)
MIN_WEIGHTS = 1 << 24


def wanted() -> bool:
    """True where oneDNN has native int8 dot products (VNNI or AMX; after $FCNSEG_CPU_ISA)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags()) and hasattr(torch, "_int_mm")


@dataclass(frozen=True)
class QuantizedConv:
    """One QDQ convolution as an integer matrix product; weight (out, kh * kw * in), NHWC order."""

    weight: torch.Tensor  # int8 (out, K)
    offset: torch.Tensor  # int32 (out,): bias_q + (128 - zx) * sum_k w
    scale: torch.Tensor  # float32 (out,): (sx * sw) / sy
    out_zero_point: int
    kernel: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    in_zero_point: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (1, H, W, C) -> uint8 NHWC (1, H', W', out)."""
        (kh, kw), (top, left, bottom, right) = self.kernel, self.pads
        if any(self.pads):
            padded = x.new_full(
                (1, x.shape[1] + top + bottom, x.shape[2] + left + right, x.shape[3]), self.in_zero_point
            )
            padded[:, top : top + x.shape[1], left : left + x.shape[2]] = x
            x = padded
        _, height, width, channels = x.shape
        out_h, out_w = height - kh + 1, width - kw + 1
        if (kh, kw) == (1, 1):
            cells = x.reshape(-1, channels)
        else:
            s = x.stride()
            windows = x.as_strided((out_h, out_w, kh, kw, channels), (s[1], s[2], s[1], s[2], s[3]))
            cells = windows.reshape(out_h * out_w, kh * kw * channels)
        shifted = (cells ^ 128).view(torch.int8)  # x - 128, exactly
        sums = torch._int_mm(shifted, self.weight.t()) + self.offset
        q = torch.round(sums.float() * self.scale).add_(self.out_zero_point).clamp_(0, 255)
        return q.to(torch.uint8).view(1, out_h, out_w, -1)


class QuantizedGemms:
    """A chain of :class:`QuantizedConv` from the uint8 map ``source`` to the uint8 map ``target``."""

    def __init__(self, layers: list[QuantizedConv], source: str, target: str) -> None:
        self.layers, self.source, self.target = layers, source, target

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """uint8 NCHW (1, C, H, W) -> uint8 NCHW, as onnxruntime's maps are."""
        y = torch.from_numpy(x).permute(0, 2, 3, 1).contiguous()
        for layer in self.layers:
            y = layer(y)
        return y.permute(0, 3, 1, 2).contiguous().numpy()


def _array(inits: dict, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name]) if name in inits else None


def _layer(node, dq, q, inits: dict, producer: dict) -> QuantizedConv | None:
    """``node`` (a Conv reading DequantizeLinear ``dq``, written by QuantizeLinear ``q``) as a
    QuantizedConv, None where it is not a plain uint8/int8 convolution with an int32 bias."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) != 1 or list(attrs.get("strides", [1, 1])) != [1, 1]:
        return None
    if list(attrs.get("dilations", [1, 1])) != [1, 1] or attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
        return None
    if len(node.input) < 3 or len(dq.input) < 3 or len(q.input) < 3:
        return None
    wdq, bdq = producer.get(node.input[1]), producer.get(node.input[2])
    if wdq is None or bdq is None or wdq.op_type != "DequantizeLinear" or bdq.op_type != "DequantizeLinear":
        return None
    weight, w_scale = _array(inits, wdq.input[0]), _array(inits, wdq.input[1])
    w_zero = _array(inits, wdq.input[2]) if len(wdq.input) > 2 else None
    bias = _array(inits, bdq.input[0])
    x_scale, x_zero = _array(inits, dq.input[1]), _array(inits, dq.input[2])
    y_scale, y_zero = _array(inits, q.input[1]), _array(inits, q.input[2])
    arrays = (weight, w_scale, bias, x_scale, x_zero, y_scale, y_zero)
    if any(a is None for a in arrays) or weight.dtype != np.int8 or bias.dtype != np.int32:
        return None
    if x_zero.dtype != np.uint8 or y_zero.dtype != np.uint8 or x_scale.size != 1 or y_scale.size != 1:
        return None
    if (w_zero is not None and np.any(w_zero != 0)) or weight.ndim != 4 or weight.size < MIN_WEIGHTS:
        return None
    out_channels = weight.shape[0]
    if w_scale.size not in (1, out_channels) or bias.shape != (out_channels,):
        return None
    wt = torch.from_numpy(weight.transpose(0, 2, 3, 1).reshape(out_channels, -1).copy())
    zx = int(x_zero.reshape(()))
    offset = torch.from_numpy(
        bias.astype(np.int64) + (128 - zx) * weight.reshape(out_channels, -1).sum(1, dtype=np.int64)
    )
    sx, sy = torch.tensor(float(x_scale.reshape(())), dtype=torch.float32), torch.tensor(float(y_scale.reshape(())))
    sw = torch.from_numpy(np.broadcast_to(w_scale.astype(np.float32).reshape(-1), (out_channels,)).copy())
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    return QuantizedConv(
        weight=wt,
        offset=offset.to(torch.int32),
        scale=(sx * sw) / sy,
        out_zero_point=int(y_zero.reshape(())),
        kernel=tuple(weight.shape[2:]),
        pads=(pads[0], pads[1], pads[2], pads[3]),
        in_zero_point=zx,
    )


def find_gemms(proto, source: str) -> QuantizedGemms | None:
    """The chain of huge QDQ convolutions that starts at the uint8 map ``source`` (each map read by
    one DequantizeLinear feeding one Conv, whose output is only quantized), or None."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    layers, current = [], source
    while current not in outputs:
        readers = consumers.get(current, [])
        if len(readers) != 1 or readers[0].op_type != "DequantizeLinear":
            break
        dq = readers[0]
        convs = consumers.get(dq.output[0], [])
        if len(convs) != 1 or convs[0].op_type != "Conv" or convs[0].input[0] != dq.output[0]:
            break
        after = consumers.get(convs[0].output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or convs[0].output[0] in outputs:
            break
        layer = _layer(convs[0], dq, after[0], inits, producer)
        if layer is None:
            break
        layers.append(layer)
        current = after[0].output[0]
    return QuantizedGemms(layers, source, current) if layers else None
