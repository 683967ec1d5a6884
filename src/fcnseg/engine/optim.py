"""Optimiser with the paper's parameter groups, and learning-rate schedules."""

from __future__ import annotations

import torch
from torch import nn


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, bias_lr_mult: float = 2.0,
                     bias_decay: bool = False) -> list[dict]:
    """Two groups: weights at ``lr`` with decay; biases (and norm-layer parameters) at
    ``lr * bias_lr_mult`` without decay, as in the Caffe FCN solvers. Frozen parameters are left out."""
    weights, biases = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (biases if p.ndim <= 1 else weights).append(p)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay, "name": "weights"}]
    if biases:
        groups.append({"params": biases, "lr": lr * bias_lr_mult,
                       "weight_decay": weight_decay if bias_decay else 0.0, "name": "biases"})
    return groups


def build_optimizer(model: nn.Module, *, name: str, lr: float, momentum: float, weight_decay: float,
                    bias_lr_mult: float, bias_decay: bool) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW, over :func:`parameter_groups`."""
    groups = parameter_groups(model, lr, weight_decay, bias_lr_mult, bias_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


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


def build_scheduler(optimizer: torch.optim.Optimizer, *, total: int, schedule: str, power: float = 0.9,
                    warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over :func:`lr_factor` (its state_dict goes into checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total=total, schedule=schedule, power=power, warmup=warmup))
