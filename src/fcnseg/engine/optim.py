"""Optimiser with the paper's parameter groups, and learning-rate schedules."""

from __future__ import annotations

import torch
from torch import nn


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, bias_lr_mult: float = 2.0, bias_decay: bool = False
) -> list[dict]:
    """Two groups: weights at ``lr`` with decay; biases (and norm-layer parameters) at
    ``lr * bias_lr_mult`` without decay, as in the Caffe FCN solvers. Frozen parameters are left out."""
    weights, biases = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (biases if p.ndim <= 1 else weights).append(p)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay, "name": "weights"}]
    if biases:
        groups.append(
            {
                "params": biases,
                "lr": lr * bias_lr_mult,
                "weight_decay": weight_decay if bias_decay else 0.0,
                "name": "biases",
            }
        )
    return groups


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    bias_lr_mult: float,
    bias_decay: bool,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW, over :func:`parameter_groups`.

    ``fused``: one fused kernel updates every parameter (the same update, computed in one pass over
    the memory); on CPU, torch otherwise steps parameter by parameter, a loop of small kernels that
    costs a training step of the demo model about a tenth of its time. Where this torch has no fused
    kernel for the parameters' device (torch < 2.4 on CPU, or another device), the multi-tensor
    (``foreach``) path is used where it exists, else the plain loop; the maths is the same."""
    groups = parameter_groups(model, lr, weight_decay, bias_lr_mult, bias_decay)
    if name == "sgd":
        make = lambda **impl: torch.optim.SGD(groups, lr=lr, momentum=momentum, **impl)  # noqa: E731
    elif name == "adamw":
        make = lambda **impl: torch.optim.AdamW(groups, lr=lr, **impl)  # noqa: E731
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    for impl in ([{"fused": True}, {"foreach": True}] if fused else []) + [{}]:
        try:
            return make(**impl)
        except (RuntimeError, ValueError, TypeError):  # this torch/device has no such implementation
            continue
    raise AssertionError("unreachable: the plain implementation always exists")


def lr_factor(iteration: int, *, total: int, schedule: str, power: float = 0.9, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based)."""
    factor = 1.0
    if schedule == "poly":
        factor = max(0.0, 1.0 - iteration / max(1, total)) ** power
    elif schedule != "constant":
        raise ValueError(f"unknown lr schedule {schedule!r}")
    if warmup > 0 and iteration < warmup:
        factor *= (iteration + 1) / warmup
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total: int, schedule: str, power: float = 0.9, warmup: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over :func:`lr_factor` (its state_dict goes into checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total=total, schedule=schedule, power=power, warmup=warmup)
    )
