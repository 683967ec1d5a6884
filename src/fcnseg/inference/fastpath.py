"""The CPU fast path: bfloat16 weights + channels_last + inference_mode where the CPU has native bf16.

On CPUs with AVX512-BF16 or AMX (recent Xeon and EPYC) oneDNN runs bf16 convolutions several times
faster than fp32. On other CPUs emulated bf16 is slower than fp32, so the fast path stays off there.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch
from torch import nn

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 CPU features present (from /proc/cpuinfo; empty where unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


def fast_path_supported() -> bool:
    """True when bf16 autocast on this CPU is expected to beat fp32."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return bool(cpu_bf16_flags()) and torch.backends.mkldnn.is_available()


def fast_path_reason() -> str:
    """A short phrase saying why the fast path is (not) available, for logs."""
    flags = cpu_bf16_flags()
    if fast_path_supported():
        return f"CPU has {'+'.join(flags)}"
    return "CPU lacks native bf16 (amx_bf16/avx512_bf16)"


def _is_score_module(module: nn.Module, num_classes: int) -> bool:
    """A leaf layer that outputs class scores: score convolutions and score upsamplers."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or list(module.children()):
        return False
    out_dim = 1 if getattr(module, "transposed", False) else 0  # ConvTranspose weights are (in, out, k, k)
    return weight.shape[out_dim] == num_classes


def _inputs_to_float(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)


def prepare_model(model: nn.Module, fast: bool, num_classes: int | None = None) -> nn.Module:
    """Put ``model`` (in place) in eval mode; for the fast path convert it to bf16 + channels_last.

    The class-score layers (score convolutions, upsamplers, skip fusions) stay in fp32: they cost
    almost nothing, and bf16's 8-bit mantissa there would turn close scores into argmax flips.
    Converting the weights once beats autocast, which re-casts all weights on every forward.
    """
    model.eval()
    if not fast:
        return model
    model.to(torch.bfloat16, memory_format=torch.channels_last)
    if num_classes:
        for module in model.modules():
            if _is_score_module(module, num_classes):
                module.float()
                if not getattr(module, "_fp32_head", False):  # one hook, even if prepared twice
                    module.register_forward_pre_hook(_inputs_to_float)
                    module._fp32_head = True
    return model


class Compiled(nn.Module):
    """``model`` through torch.compile with inductor weight freezing (prepacked weights, fused
    conv + ReLU). The first call per input shape compiles (tens of seconds), so it pays off for
    many same-size images or tiled large images, whose tiles all have the tile's shape."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


def run_model(model: nn.Module, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """Forward a normalised float batch through a model from :func:`prepare_model`; float32 scores."""
    with torch.inference_mode():
        if fast:
            x = x.to(torch.bfloat16, memory_format=torch.channels_last)
        return model(x).float()
