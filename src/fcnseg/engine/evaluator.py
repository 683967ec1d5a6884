"""Evaluation: the paper's four metrics, per-class IoU and the validation loss over a dataset split.

A model with more heads than the semantic one (SIFT Flow's geometric head) on a dataset that has
those labels (``extra_targets``) is scored on each of them too: ``result["heads"][name]``."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fcnseg.data import build_loader
from fcnseg.data.base import WithTargets
from fcnseg.data.normalize import mean_pixel
from fcnseg.devices import keep_freed_cpu_memory
from fcnseg.engine.checkpoint import model_from_checkpoint
from fcnseg.engine.losses import segmentation_loss
from fcnseg.engine.metrics import ConfusionMatrix
from fcnseg.engine.progress import track
from fcnseg.engine.runtime import (
    all_reduce_sum,
    autocast,
    current_dist,
    prepare_input,
    resolve_device,
    resolve_precision,
    unwrap,
)
from fcnseg.errors import FcnsegError
from fcnseg.weights.meta import ModelMeta, as_meta


def check_compatible(meta: ModelMeta | dict, dataset: Any, what: str) -> None:
    """FcnsegError when the model's number of classes or input modality differs from the dataset's."""
    meta = as_meta(meta)
    model_classes = meta.model_kwargs.get("num_classes")
    if model_classes is not None and model_classes != dataset.num_classes:
        raise FcnsegError(
            f"{what} predicts {model_classes} classes but dataset {dataset!r} has "
            f"{dataset.num_classes}; evaluate on the data it was trained for or retrain"
        )
    data_modality = getattr(dataset, "modality", "rgb")
    if data_modality != meta.modality:
        raise FcnsegError(
            f"{what} takes {meta.modality} input but dataset {dataset!r} gives {data_modality}; open the "
            f"data with load_dataset(spec, split, modality={meta.modality!r}) (fcnseg evaluate does)"
        )


def extra_heads(model: nn.Module, dataset: Any) -> tuple[str, ...]:
    """The model's heads beyond the semantic one for which ``dataset`` has labels, in the model's order:
    the heads training gives a loss and evaluation scores."""
    have = {target.name for target in getattr(dataset, "extra_targets", ())}
    return tuple(h for h in getattr(unwrap(model), "head_names", ("semantic",))[1:] if h in have)


def check_not_empty(dataset: Any, what: str) -> None:
    if len(dataset) == 0:
        raise FcnsegError(f"{what} {dataset!r} is empty; check the dataset path and split")


def load_for_eval(
    checkpoint_or_model: nn.Module | dict | str | os.PathLike, meta: ModelMeta | dict | None
) -> tuple[nn.Module, ModelMeta, str]:
    """(model, meta, description) from a checkpoint path/dict or a model plus its meta."""
    if isinstance(checkpoint_or_model, nn.Module):
        if meta is None:
            classes = getattr(unwrap(checkpoint_or_model), "num_classes", None)
            meta = ModelMeta(
                type(unwrap(checkpoint_or_model)).__name__, {"num_classes": classes} if classes is not None else {}
            )
        if isinstance(meta, dict) and "model_name" not in meta:  # a partial dict: what evaluate needs
            meta = {"model_name": type(unwrap(checkpoint_or_model)).__name__, **meta}
        return checkpoint_or_model, as_meta(meta), "the model"
    if isinstance(checkpoint_or_model, dict):
        model, meta = model_from_checkpoint(checkpoint_or_model)
        return model, meta, "the checkpoint"
    from fcnseg.weights import open_model  # any model source: .pt, .safetensors, published name, ...

    path = str(checkpoint_or_model)
    opened = open_model(path)
    return opened.require_module("evaluate"), opened.meta, f"model {path}"


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    normalization: str,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    all_heads: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Scores (N, C, H, W) in fp32 for a uint8 batch; with ``all_heads``, every head's by name."""
    x = prepare_input(images, normalization, device, channels_last)
    with autocast(device, precision):
        if all_heads:
            return {name: scores.float() for name, scores in model(x, all_heads=True).items()}
        return model(x).float()


def evaluate(
    checkpoint_or_model: nn.Module | dict | str | os.PathLike,
    dataset: Any,
    *,
    meta: ModelMeta | dict | None = None,
    batch_size: int = 1,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str = "auto",
    max_images: int | None = None,
    workers: int = 0,
    class_weights: torch.Tensor | None = None,
    ignore_index: int | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate a model (or checkpoint file/dict) on ``dataset``.

    Returns ConfusionMatrix.compute()'s metrics (pixel_acc, mean_acc, mean_iu, fw_iu, per_class_iou,
    per_class_acc, pixels) plus ``loss`` (cross-entropy per labelled pixel), ``images``,
    ``confusion`` (rows truth, columns prediction) and ``class_names``. Inside an initialised process
    group every process evaluates its share of the images and the results are summed across ranks.
    ``progress`` shows a bar on a terminal, else a log line at about every 10% (rank 0 only).
    A dataset with ``score_present_classes`` (SIFT Flow) averages mean IU over the classes present in
    its labels, as the paper does. A model with extra heads that the dataset labels (``extra_heads``)
    adds ``heads``: {name: the same metrics, ``confusion`` and ``class_names``} (SIFT Flow:
    ``result["heads"]["geometric"]["pixel_acc"]``).
    """
    model, meta, what = load_for_eval(checkpoint_or_model, meta)
    check_not_empty(dataset, "evaluation split of")
    if meta.model_kwargs.get("num_classes") is not None:
        check_compatible(meta, dataset, what)
    ignore = dataset.ignore_index if ignore_index is None else ignore_index
    dev = resolve_device(device) if isinstance(device, str) else device
    precision = resolve_precision(precision, dev)
    if dev.type == "cpu":
        keep_freed_cpu_memory()  # each batch reuses the last one's memory (no page faults)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    if not isinstance(checkpoint_or_model, nn.Module):
        net.to(dev)
        if channels_last:
            net.to(memory_format=torch.channels_last)
    weight = class_weights.to(dev) if class_weights is not None else None

    if max_images is not None and max_images < 1:
        raise FcnsegError(f"max_images must be at least 1 (got {max_images}); leave it out to use every image")
    if batch_size < 1:
        raise FcnsegError(f"batch size must be at least 1 (got {batch_size})")
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    info = current_dist()
    shard = list(range(info.rank, n, info.world_size))
    heads = extra_heads(net, dataset)
    loader = build_loader(
        WithTargets(dataset, heads) if heads else dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=shard,
        workers=workers,
        pad_value=mean_pixel(meta.normalization),
    )
    confusion = ConfusionMatrix(dataset.num_classes, ignore_index=ignore)
    targets = {t.name: t for t in getattr(dataset, "extra_targets", ())}
    head_confusion = {h: ConfusionMatrix(targets[h].num_classes, ignore_index=ignore) for h in heads}
    loss_sum, labelled = 0.0, 0.0
    for images, masks in track(loader, len(loader), "evaluate", enabled=progress and info.is_main, unit="batches"):
        scores = predict_logits(
            net,
            images,
            normalization=meta.normalization,
            device=dev,
            precision=precision,
            channels_last=channels_last,
            all_heads=bool(heads),
        )
        masks = masks.to(dev)
        if heads:  # masks (N, 1 + K, H, W): the semantic labels, then each head's
            for k, head in enumerate(heads, 1):
                head_confusion[head].update(scores[head].argmax(1), masks[:, k])
            logits, masks = scores["semantic"], masks[:, 0]
        else:
            logits = scores
        loss_sum += float(segmentation_loss(logits, masks, ignore_index=ignore, weight=weight, reduction="sum"))
        labelled += float((masks != ignore).sum())
        confusion.update(logits.argmax(1), masks)
    net.train(was_training)

    confusion.all_reduce()
    for matrix in head_confusion.values():
        matrix.all_reduce()
    loss_sum, labelled, images_seen = all_reduce_sum([loss_sum, labelled, float(len(shard))])
    present_only = bool(getattr(dataset, "score_present_classes", False))
    result = confusion.compute(present_only)
    result.update(
        loss=loss_sum / labelled if labelled else float("nan"),
        images=int(images_seen),
        confusion=confusion.mat.tolist(),
        class_names=list(getattr(dataset, "class_names", [])),
    )
    if heads:
        result["heads"] = {
            h: {**m.compute(present_only), "confusion": m.mat.tolist(), "class_names": list(targets[h].class_names)}
            for h, m in head_confusion.items()
        }
    return result
