"""A matrix product's weight packed once into oneDNN's blocked layout: ``x @ W^T + b`` at the
kernels' peak, for the layers that are one big matrix product (fc6/fc7 as GEMMs, Winograd's channel
products).

Why not ``torch.addmm``/``torch.bmm``: in fp32 they go to MKL, which on AMD CPUs runs its AVX2
kernels even where the CPU has AVX512; and every call reads a plain row-major weight. oneDNN's inner
product with a weight reordered once to its blocked layout (``torch.ops.mkldnn._reorder_linear_weight``,
what inductor's weight freezing uses) reaches the CPU's peak. Measured on 2 EPYC cores (Zen 5,
AVX512-BF16), 256 x 4096 x 4096 (fc7 at 500x500): fp32 51.6 -> 17.8 ms natively and 44 -> 36 ms
capped to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``); bf16 256 x 25088 x 4096
(fc6): 83 -> 60 ms. Results are the same sums (bit-identical to ``addmm`` in bf16, ~1e-6 relative in
fp32, where the summation order differs).

Where oneDNN cannot pack (a build without it, another device, an unsupported dtype) the weight stays
a plain tensor and products run ``F.linear``: same values, no oneDNN needed. A packed weight is an
opaque tensor (no storage, no ``deepcopy``), so :class:`PackedWeight` copies and pickles itself
through its plain form, and a module holding one converts it in ``_apply`` (``.to``, ``.float``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# the row count oneDNN picks its blocked layout for; any other count runs on the same layout
# (VGG16 at 500x500: 256 cells for fc6/fc7, 64 to 1225 Winograd tiles)
ROWS_HINT = 256


def _pack(weight: Tensor) -> Tensor | None:
    """``weight`` (out, in) in oneDNN's blocked layout, or None where oneDNN cannot take it."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ROWS_HINT)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None


class PackedWeight:
    """The weight ``W`` (out, in) of ``x @ W^T + b``, packed for oneDNN where it can be.

    ``packed=False`` keeps the plain weight (``torch.compile`` traces plain tensors only)."""

    def __init__(self, weight: Tensor, packed: bool = True) -> None:
        if weight.dim() != 2:
            raise ValueError(f"a packed weight is a (out, in) matrix, got shape {tuple(weight.shape)}")
        self.shape, self.dtype, self.wants_packing = tuple(weight.shape), weight.dtype, packed
        self._packed = _pack(weight) if packed else None
        self._plain = None if self._packed is not None else weight.detach().contiguous()

    @property
    def is_packed(self) -> bool:
        return self._packed is not None

    def __call__(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """``x @ W^T + bias`` over the last dimension of ``x``."""
        if self._packed is None or x.dtype != self.dtype or (x.requires_grad and torch.is_grad_enabled()):
            return F.linear(x, self.dense().to(x.dtype), None if bias is None else bias.to(x.dtype))
        if bias is not None and bias.dtype != self.dtype:
            bias = bias.to(self.dtype)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._packed, bias, "none", [], "")

    def dense(self) -> Tensor:
        """The plain (out, in) weight (exactly the one packed)."""
        return self._plain if self._packed is None else self._packed.to_dense()

    def apply(self, fn: Callable[[Tensor], Tensor]) -> PackedWeight:
        """A PackedWeight of ``fn(weight)`` (a module's ``_apply``: dtype or device conversions)."""
        dense = self.dense()
        converted = fn(dense)
        if converted is dense:
            return self
        return PackedWeight(converted, self.wants_packing)

    def plain(self) -> PackedWeight:
        """The same weight, unpacked."""
        return self if self._packed is None else PackedWeight(self.dense(), packed=False)

    def __deepcopy__(self, memo) -> PackedWeight:
        return PackedWeight(self.dense().clone(), self.wants_packing)

    def __getstate__(self) -> dict:
        return {"weight": self.dense(), "packed": self.wants_packing}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["weight"], state["packed"])

    def __repr__(self) -> str:
        kind = "oneDNN-packed" if self.is_packed else "plain"
        return f"PackedWeight({self.shape[1]} -> {self.shape[0]}, {self.dtype}, {kind})"
