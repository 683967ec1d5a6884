"""Segmentation metrics from one confusion matrix (FCN paper, Section 5).

With n_ij the number of pixels of true class i predicted as class j and t_i = sum_j n_ij:

    pixel accuracy            sum_i n_ii / sum_i t_i
    mean accuracy             (1/n_cl) sum_i n_ii / t_i
    mean IU                   (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency-weighted IU     (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Which classes count in the means (n_cl):
  * mean IU averages over classes present in the truth OR the prediction; a class absent from
    both has IU 0/0 and is left out (a predicted-but-absent class has IU 0 and counts).
  * mean accuracy averages over classes present in the truth (n_ii / t_i is undefined if t_i = 0).
  * ``compute(present_only=True)``: mean IU too averages over the classes present in the truth, as
    the paper scores SIFT Flow ("only included categories actually present in the test set").
Per-class values of left-out classes are NaN. Pixels whose target is ``ignore_index`` are skipped.
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates an (n_classes x n_classes) confusion matrix; rows are truth, columns prediction."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch: ``pred`` and ``target`` are integer label maps of the same shape, as torch
        tensors or numpy arrays (e.g. what ``Segmenter.predict`` returns) in any mix."""
        pred, target = _labels(pred, "prediction"), _labels(target, "target")
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        n = self.num_classes
        pred = pred.reshape(-1).to(device="cpu", dtype=torch.int64)
        target = target.reshape(-1).to(device="cpu", dtype=torch.int64)
        keep = (
            target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        )
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= n):
            raise ValueError(
                f"target labels must be in [0, {n}) or {self.ignore_index}; "
                f"found {int(target.min())}..{int(target.max())}"
            )
        if pred.numel() and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"predicted labels must be in [0, {n}); found {int(pred.min())}..{int(pred.max())}")
        self.mat += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix of the same size (e.g. from another worker) into this one."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different sizes")
        self.mat += other.mat
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all processes of an initialised torch.distributed group (no-op otherwise)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        return self

    def compute(self, present_only: bool = False) -> dict:
        """The four standard metrics plus per-class IoU and accuracy (floats; NaN where undefined);
        ``present_only``: mean IU over the classes present in the truth (see the module docstring)."""
        m = self.mat.to(torch.float64)
        diag = m.diag()
        truth = m.sum(1)  # t_i
        predicted = m.sum(0)  # sum_j n_ji
        union = truth + predicted - diag
        total = truth.sum()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        acc = torch.where(truth > 0, diag / truth.clamp(min=1), nan)
        iou = torch.where(union > 0, diag / union.clamp(min=1), nan)
        if total == 0:
            return {
                "pixel_acc": float("nan"),
                "mean_acc": float("nan"),
                "mean_iu": float("nan"),
                "fw_iu": float("nan"),
                "per_class_iou": iou.tolist(),
                "per_class_acc": acc.tolist(),
                "pixels": 0,
            }
        return {
            "pixel_acc": float(diag.sum() / total),
            "mean_acc": float(acc[truth > 0].mean()),
            "mean_iu": float(iou[truth > 0].mean() if present_only else iou[union > 0].mean()),
            "fw_iu": float((truth[union > 0] * iou[union > 0]).sum() / total),
            "per_class_iou": iou.tolist(),
            "per_class_acc": acc.tolist(),
            "pixels": int(total),
        }


def _labels(value, what: str) -> torch.Tensor:
    """A label map as an integer tensor (numpy arrays and nested lists are converted without copying
    where possible); floats are refused, because a probability map is not a label map."""
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{what} must hold integer class ids, got {tensor.dtype}; take argmax of scores first")
    return tensor
