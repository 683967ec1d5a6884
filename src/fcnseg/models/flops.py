"""Counting a model's FLOPs (run symbolically: no arithmetic, milliseconds) and its weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> int:
    """FLOPs of one forward pass on a (batch, C, H, W) input, counted by torch's FlopCounterMode
    (C is the model's ``in_channels``: 3, or 6 for the late-fusion models).

    A multiply-add counts as 2 FLOPs; convolutions, transposed convolutions and matmuls are counted
    (elementwise ops, pooling and interpolation are not, as usual). The pass runs on fake tensors
    (or on the meta device for a model built there), so it is fast and leaves the model untouched.
    The model is in eval mode during the count, so BatchNorm statistics are not updated.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fcnseg.models.layers import symbolic

    height, width = size
    channels = getattr(model, "in_channels", 3)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        if device.type == "meta":
            with torch.no_grad(), symbolic(), counter:
                model(torch.empty(batch, channels, height, width, device="meta"))
        else:
            with torch.no_grad(), symbolic(), FakeTensorMode(allow_non_fake_inputs=True) as fake, counter:
                model(fake.from_tensor(torch.empty(batch, channels, height, width, device=device)))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_parameters(model: nn.Module) -> int:
    """Learned parameters plus fixed upsampling filters (weights that a learned variant would train).

    BatchNorm running statistics and other buffers are not counted, as in torchvision's tables.
    """
    from fcnseg.models.layers import BilinearUpsample

    fixed = sum(m.weight.numel() for m in model.modules() if isinstance(m, BilinearUpsample) and not m.learnable)
    return sum(p.numel() for p in model.parameters()) + fixed
