"""The training loop. Read `train` top to bottom; everything else here is a small helper it calls.

One iteration = one optimiser step on ``batch_size`` images per process. A model with a head for each
of the dataset's extra labellings (SIFT Flow's geometric classes) is trained on the sum of the heads'
losses, as the reference sums loss_sem and loss_geo. Evaluation, checkpoints and
log lines happen every ``eval_every`` / ``checkpoint_every`` / ``log_every`` iterations and at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg.config import TrainConfig, config_from_dict, save_config
from fcnseg.data import TrainTransform, load_dataset
from fcnseg.data.base import WithTargets
from fcnseg.data.normalize import mean_pixel
from fcnseg.devices import is_out_of_memory, keep_freed_cpu_memory
from fcnseg.engine.batches import training_batches
from fcnseg.engine.checkpoint import (
    load_resume_checkpoint,
    raise_diverged,
    restore_training,
    save_training_checkpoint,
)
from fcnseg.engine.evaluator import check_compatible, check_not_empty, evaluate, extra_heads, predict_logits
from fcnseg.engine.losses import load_class_weights, segmentation_loss
from fcnseg.engine.optim import build_optimizer, build_scheduler
from fcnseg.engine.progress import TrainProgress, log_summary, scalars
from fcnseg.engine.rng import mix_seed, seed_everything
from fcnseg.engine.rundir import (
    RunLock,
    check_new_run_dir,
    plot_confusion,
    plot_curves,
    prepare_run_dir,
    read_metrics,
    remove_new_run_dir,
    save_sample_strip,
    write_json,
)
from fcnseg.engine.runtime import (
    Dist,
    RunStopped,
    StopSignals,
    all_reduce_sum,
    autocast,
    barrier,
    broadcast_flag,
    init_distributed,
    prepare_input,
    resolve_device,
    resolve_precision,
    unwrap,
)
from fcnseg.errors import FcnsegError
from fcnseg.files import check_output_dir
from fcnseg.logs import configure_if_unset
from fcnseg.weights.meta import ModelMeta, describe_data

log = logging.getLogger("fcnseg.train")


def train(config: TrainConfig | dict) -> dict:
    """Train as ``config`` says; returns the run summary (also written to RUN/summary.json).

    To continue a stopped run: ``train(resume_config(run_dir))`` (see fcnseg.engine.checkpoint).
    SIGTERM or Ctrl-C during training: the current step ends, last.pt is saved and ``RunStopped``
    (exit status 128 + signal) says how to resume.
    """
    cfg = config if isinstance(config, TrainConfig) else config_from_dict(config)
    configure_if_unset()  # progress lines and the summary are log records (fcnseg.logs)
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    if device.type == "cpu":
        keep_freed_cpu_memory()  # each step reuses the last one's memory (no page faults)
    world = init_distributed(device)
    resume = load_resume_checkpoint(cfg)
    run = Path(cfg.out)
    check_output_dir(run, "--out")
    check_new_run_dir(run, resuming=resume is not None)

    # data (checked before any compute is spent or any file written), model (a backbone download
    # only once the data is known good), loss, optimiser
    train_set, val_set = open_datasets(cfg)
    skipped = check_data(cfg, train_set, val_set)
    seed_everything(cfg.seed)
    model, meta = build_model(cfg, train_set)
    lock, created = setup_run_dir(run, cfg, resuming=resume is not None, world=world)
    state = {"iteration": 0, "best_mean_iu": -1.0, "best_iteration": 0, "elapsed_s": 0.0}
    try:
        return run_training(cfg, run, device, world, resume, train_set, val_set, skipped, model, meta, state)
    except BaseException:
        if created and world.is_main and state["iteration"] == 0 and not (run / "last.pt").exists():
            lock.release()
            remove_new_run_dir(run)  # failed before its first step: leave no folder behind
        raise
    finally:
        lock.release()


def run_training(
    cfg: TrainConfig,
    run: Path,
    device: torch.device,
    world: Dist,
    resume: dict | None,
    train_set: Any,
    val_set: Any,
    skipped: dict,
    model: nn.Module,
    meta: dict,
    state: dict,
) -> dict:
    """The loop of :func:`train`, once the data, the model and the run directory are ready."""
    weights = class_weights(cfg, train_set)
    optimizer = build_optimizer(
        model,
        name=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        bias_lr_mult=cfg.bias_lr_mult,
        bias_decay=cfg.bias_decay,
    )
    scheduler = build_scheduler(
        optimizer, total=cfg.iterations, schedule=cfg.lr_schedule, power=cfg.poly_power, warmup=cfg.warmup_iters
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    if world.enabled:
        seed_everything(mix_seed(cfg.seed, world.rank))  # different dropout / loss-sampling draws per process
    position = None
    if resume is not None:
        position = restore_training(resume, model, optimizer, scheduler, scaler, state, world)
    net = wrap_model(model, cfg, device, world)

    report = TrainProgress(
        run,
        cfg,
        is_main=world.is_main,
        start_iteration=state["iteration"],
        resumed=resume is not None,
        elapsed_before=state["elapsed_s"],
    )
    report.header(train_set, val_set, model, device, world.world_size, run)
    heads = extra_heads(model, train_set)
    samples, transform = training_samples(cfg, meta, train_set)
    batches = training_batches(
        WithTargets(train_set, heads) if heads else samples,
        transform=transform,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        start_iteration=state["iteration"],
        workers=cfg.workers,
        rank=world.rank,
        world_size=world.world_size,
        pad_value=mean_pixel(meta["normalization"]),
        skip_bad=cfg.skip_bad,
        position=position,
        skipped=skipped,
    )

    def checkpoint(name: str) -> None:
        state["elapsed_s"] = report.total_seconds()
        save_training_checkpoint(
            run / name, model, meta, optimizer, scheduler, scaler, state, cfg, world, stream=batches.position
        )

    def validate() -> dict:
        """Evaluate on the val split; last.pt is already on disk, and a failure says so."""
        try:
            return evaluate(
                net,
                val_set,
                meta=meta,
                precision=cfg.precision,
                channels_last=cfg.channels_last,
                device=device,
                max_images=cfg.max_val_images,
                workers=cfg.workers,
                class_weights=weights,
                progress=report.bar_on,
            )
        except Exception as exc:  # noqa: BLE001  (whatever broke, the weights are safe: say where)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, FcnsegError):
                reason = f"{type(exc).__name__}: {reason}"
            kept = run / "last.pt"
            raise FcnsegError(
                f"validation at iteration {state['iteration']} failed ({reason}); the trained "
                f"weights are saved in {kept}: fix the data, then `fcnseg evaluate --checkpoint "
                f"{kept}` or continue with --resume {run}"
            ) from None

    val = None

    # the loop; a stop signal ends it after the current step, with last.pt saved
    with StopSignals() as stop:
        while state["iteration"] < cfg.iterations:
            with out_of_memory_advice(f"at iteration {state['iteration'] + 1}", device, memory_options(cfg)):
                images, masks, *pixel_weights = next(batches)
                loss = train_step(
                    net,
                    images,
                    masks,
                    pixel_weights=pixel_weights[0] if pixel_weights else None,
                    cfg=cfg,
                    meta=meta,
                    device=device,
                    weights=weights,
                    optimizer=optimizer,
                    scaler=scaler,
                    world=world,
                    iteration=state["iteration"],
                    run=run,
                    heads=heads,
                )
            scheduler.step()
            state["iteration"] += 1
            it = state["iteration"]
            done = it == cfg.iterations
            report.step(it, len(images) * world.world_size, loss, optimizer.param_groups[0]["lr"])

            if due(it, cfg.eval_every) or done:
                checkpoint("last.pt")  # before validating: a failing validation never costs the training
                val = validate()
                report.validation(it, val, best=val["mean_iu"] > state["best_mean_iu"])
                if val["mean_iu"] > state["best_mean_iu"]:
                    state["best_mean_iu"], state["best_iteration"] = val["mean_iu"], it
                    checkpoint("best.pt")
                    checkpoint("last.pt")  # again, now holding the new best
            elif due(it, cfg.checkpoint_every):
                checkpoint("last.pt")
            if stop.requested() and not done:
                checkpoint("last.pt")
                report.close()
                message = (
                    f"stopped by {stop.name} at iteration {it} of {cfg.iterations}; last.pt saved; "
                    f"resume with `fcnseg train --resume {run}`"
                )
                if world.is_main:
                    log.warning("%s", message)
                raise RunStopped(message, stop.signum)
    report.close()

    if val is None:  # resumed a run that had already finished
        val = validate()
    summary = finish_run(
        run, cfg, model, meta, val, state, val_set, device, world, report.total_seconds(), skipped=batches.skipped
    )
    barrier()
    return summary


# ---------------------------------------------------------------------------------------------
# one step


def train_step(
    net: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    cfg: TrainConfig,
    meta: dict,
    device: torch.device,
    weights: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    world: Dist,
    iteration: int,
    run: Path,
    heads: tuple[str, ...] = (),
    pixel_weights: torch.Tensor | None = None,
) -> float:
    """Forward, loss, backward, update. Stops the run (FcnsegError) on a non-finite loss, before the update.

    With extra ``heads`` the masks are (N, 1 + K, H, W) (semantic first) and the loss is the sum of
    each head's; class weights apply to the semantic head only."""
    x = prepare_input(images, meta["normalization"], device, cfg.channels_last)
    masks = masks.to(device)
    with autocast(device, cfg.precision):
        scores = net(x, all_heads=True) if heads else {"semantic": net(x)}
    labels = dict(zip(("semantic", *heads), masks.unbind(1))) if heads else {"semantic": masks}
    loss = sum(
        segmentation_loss(
            scores[head],
            labels[head],
            ignore_index=cfg.ignore_index,
            weight=weights if head == "semantic" else None,
            reduction=cfg.loss_reduction,
            sample_prob=cfg.loss_sample_prob,
            pixel_weight=pixel_weights.to(device) if pixel_weights is not None and head == "semantic" else None,
        )
        for head in labels
    )
    value = float(loss.detach())
    if world.enabled:
        value = all_reduce_sum([value])[0] / world.world_size
    if not math.isfinite(value):
        raise_diverged(run, iteration + 1, value)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return value


@contextlib.contextmanager
def out_of_memory_advice(where: str, device: torch.device, lower: str) -> Iterator[None]:
    """An allocation failure inside the block becomes one FcnsegError saying where, and which options
    to lower (``lower``)."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise FcnsegError(f"out of memory on {device} {where}: lower {lower}") from None


def memory_options(cfg: TrainConfig) -> str:
    """The options that size a training step, with their values."""
    crop = f"--crop-size (now {cfg.crop_size})" if cfg.crop_size else "--crop-size (now unset: whole images)"
    return f"--batch-size (now {cfg.batch_size}) or {crop}, or --width (now {cfg.width:g})"


def due(iteration: int, every: int) -> bool:
    return every > 0 and iteration % every == 0


# ---------------------------------------------------------------------------------------------
# set-up helpers


def check_modality(cfg: TrainConfig) -> None:
    """--modality against the model's input channels and --jitter, before any data is read."""
    from fcnseg.data.base import MODALITIES
    from fcnseg.models import model_entry

    takes, gives = model_entry(cfg.model).in_channels, MODALITIES[cfg.modality]
    if takes != gives:
        fix = f"--model {cfg.model}-fusion" if gives == 6 else "a single-stream model (e.g. fcn32s)"
        raise FcnsegError(
            f"--model {cfg.model} takes {takes}-channel input but --modality {cfg.modality} gives {gives}; use {fix}"
        )
    if cfg.jitter and cfg.modality != "rgb":
        raise FcnsegError(f"--jitter is colour jitter, for rgb input only; leave it out with --modality {cfg.modality}")


def open_datasets(cfg: TrainConfig) -> tuple[Any, Any]:
    if not cfg.data:
        raise FcnsegError("no dataset given; pass --data SPEC (e.g. --data shapes or --data voc:PATH)")
    check_modality(cfg)
    train_set = load_dataset(cfg.data, cfg.train_split).with_modality(cfg.modality)
    val_set = load_dataset(cfg.data, cfg.val_split).with_modality(cfg.modality)
    check_not_empty(train_set, "training split of")
    check_not_empty(val_set, "validation split of")
    if cfg.weight_map:
        from fcnseg.data.instances import check_weight_map

        check_weight_map(train_set, cfg.class_weights)
    if train_set.num_classes != val_set.num_classes:
        raise FcnsegError(
            f"splits {cfg.train_split!r} and {cfg.val_split!r} of {cfg.data} disagree on the number "
            "of classes; check the dataset"
        )
    return train_set, val_set


def check_data(cfg: TrainConfig, train_set: Any, val_set: Any) -> dict[str, str]:
    """Both splits checked before training (``fcnseg.data.check.preflight``), with `data check`'s
    messages. Bad val samples always stop the run; bad training samples stop it unless --skip-bad,
    which logs each once and returns them (name -> problem) to be counted in the summary."""
    from fcnseg.data.check import preflight

    skipped: dict[str, str] = {}
    for dataset, split, limit in ((train_set, cfg.train_split, None), (val_set, cfg.val_split, cfg.max_val_images)):
        found = preflight(dataset, workers=max(1, cfg.workers), limit=limit)
        if not found:
            continue
        problems = [p for sample in found.values() for p in sample]
        where = f"{len(found)} of {min(len(dataset), limit or len(dataset))} samples of split {split!r} of {cfg.data}"
        first = f"{problems[0]['file']}: {problems[0]['problem']}"
        if dataset is val_set or not cfg.skip_bad:
            hint = " (or pass --skip-bad to leave them out)" if dataset is train_set else ""
            raise FcnsegError(
                f"{where} are bad, found before training; first: {first}; run `fcnseg data check "
                f"{cfg.data}` to list them all{hint}"
            )
        if len(found) == len(dataset):
            raise FcnsegError(
                f"every one of the {len(dataset)} samples of split {split!r} of {cfg.data} is bad "
                f"(first: {first}); nothing to train on: fix the data "
                f"(`fcnseg data check {cfg.data}` lists every problem)"
            )
        for index, sample in found.items():
            name, first = dataset.sample_name(index), sample[0]
            skipped[name] = first["problem"] if first["file"] == name else f"{first['file']}: {first['problem']}"
            log.warning("skipped bad sample %s: %s", name, skipped[name])
    return skipped


def model_meta(cfg: TrainConfig, dataset: Any) -> ModelMeta:
    """Everything a predictor needs to rebuild the model and read its output, and what it learnt from."""
    kwargs = {
        "num_classes": dataset.num_classes,
        "backbone": cfg.backbone,
        "geometry": cfg.geometry,
        "width": cfg.width,
        **head_options(cfg, dataset),
        **cfg.model_options,
    }
    from fcnseg.data.base import MODALITIES
    from fcnseg.data.normalize import for_channels

    return ModelMeta(
        cfg.model,
        kwargs,
        dataset.class_names,
        dataset.palette,
        for_channels(cfg.normalization, MODALITIES[cfg.modality]),
        trained_on=describe_data(cfg.data, cfg.train_split),
        data=cfg.data,
        train_split=cfg.train_split,
        modality=cfg.modality,
    )


def head_options(cfg: TrainConfig, dataset: Any) -> dict[str, int]:
    """A head for each extra labelling of the data that the model can have (SIFT Flow's geometric
    classes: ``geometric_classes=3`` for an FCN); ``--model-options`` may still set it (0: none)."""
    from fcnseg.models import model_options

    accepted = model_options(cfg.model)
    targets = getattr(dataset, "extra_targets", ())
    return {f"{t.name}_classes": t.num_classes for t in targets if f"{t.name}_classes" in accepted}


def build_model(cfg: TrainConfig, dataset: Any) -> tuple[nn.Module, dict]:
    """create_model from the config (plus backbone weights), then matching layers from --init-from."""
    from fcnseg.models import create_model, load_matching

    meta = model_meta(cfg, dataset)
    backbone_weights = cfg.backbone_weights
    if backbone_weights:  # a registered name (e.g. vgg16): the verified file in the cache, fetched now
        from fcnseg.weights import backbone_file

        backbone_weights = str(backbone_file(backbone_weights))
    with out_of_memory_advice(f"creating {cfg.model}", torch.device("cpu"), f"--width (now {cfg.width:g})"):
        model = create_model(cfg.model, backbone_weights=backbone_weights, **meta["model_kwargs"])
    if cfg.init_from:
        source = load_init_source(cfg.init_from)
        check_compatible(source["meta"], dataset, f"--init-from checkpoint {cfg.init_from}")
        loaded, _skipped = load_matching(model, source["model"])
        if not loaded:
            raise FcnsegError(
                f"--init-from checkpoint {cfg.init_from} shares no layer with {cfg.model}; "
                "pass a checkpoint of a related model (e.g. fcn32s for fcn16s)"
            )
    return model, meta


def check_backbone_weights(cfg: TrainConfig) -> None:
    """Before any work: a --backbone-weights that is neither a registered name nor a file is one line
    ("did you mean"); a registered name is only downloaded by build_model, once the data is checked."""
    if cfg.backbone_weights:
        from fcnseg.weights import backbone_file, is_registered

        if not is_registered(cfg.backbone_weights):
            backbone_file(cfg.backbone_weights)


def load_init_source(path: str) -> dict:
    """{"model": state dict, "meta": ModelMeta} from any model source with PyTorch weights (a .pt of
    `fcnseg train`, a .safetensors export, a published name, a .caffemodel, ...: weights.open_model)."""
    from fcnseg.weights import open_model

    opened = open_model(path)
    return {"model": opened.require_module("--init-from").state_dict(), "meta": opened.meta}


def class_weights(cfg: TrainConfig, dataset: Any) -> torch.Tensor | None:
    if cfg.class_weights in (None, "none"):
        return None
    if cfg.class_weights == "median":
        from fcnseg.data import class_frequencies, median_frequency_weights

        return median_frequency_weights(class_frequencies(dataset)).float()
    return load_class_weights(cfg.class_weights, dataset.num_classes)


def train_transform(cfg: TrainConfig, meta: dict) -> TrainTransform | None:
    if cfg.crop_size is None and cfg.scale_range is None and not cfg.hflip and cfg.jitter == 0 and cfg.elastic == 0:
        return None
    return TrainTransform(
        crop_size=cfg.crop_size,
        scale_range=cfg.scale_range,
        hflip=cfg.hflip,
        jitter=cfg.jitter,
        pad_value=mean_pixel(meta["normalization"]),
        ignore_index=cfg.ignore_index,
        elastic=cfg.elastic,
    )


def training_samples(cfg: TrainConfig, meta: dict, train_set: Any) -> tuple[Any, Any]:
    """(dataset, transform) the batches are drawn from; with --weight-map the samples carry U-Net's
    per-pixel weights, computed from the augmented instance ids (fcnseg.data.instances)."""
    transform = train_transform(cfg, meta)
    if not cfg.weight_map:
        return train_set, transform
    from fcnseg.data.instances import with_weight_map

    return with_weight_map(train_set, transform)


def wrap_model(model: nn.Module, cfg: TrainConfig, device: torch.device, world: Dist) -> nn.Module:
    """Device, memory format, DDP and torch.compile, in that order. ``unwrap`` undoes it."""
    model.to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if world.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return net


# ---------------------------------------------------------------------------------------------
# checkpoints and resume


def setup_run_dir(run: Path, cfg: TrainConfig, resuming: bool, world: Dist) -> tuple[RunLock | None, bool]:
    """Rank 0 creates the run directory, takes its lock and (for a new run) writes config.yaml; every
    rank learns if that failed. A resumed run's config.yaml is left as it is: it already equals the
    checkpoint's config or holds edits the command line applied (see resume_config); it is rewritten
    with the next last.pt. Returns (the lock, or None on other ranks; whether the folder is new)."""
    error, lock, created = None, None, False
    if world.is_main:
        try:
            _, lock, created = prepare_run_dir(run, resuming=resuming)
            if not resuming:
                save_config(cfg, run / "config.yaml")
        except FcnsegError as exc:
            if lock is not None:
                lock.release()
                if created:
                    remove_new_run_dir(run)
            error = exc
    if broadcast_flag(error is not None):
        raise error or FcnsegError(f"rank 0 could not prepare the run directory {run}; see its message")
    return lock or _NoLock(), created


class _NoLock:
    def release(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# the end of a run


def finish_run(
    run: Path,
    cfg: TrainConfig,
    model: nn.Module,
    meta: dict,
    val: dict,
    state: dict,
    val_set: Any,
    device: torch.device,
    world: Dist,
    seconds: float,
    skipped: dict | None = None,
) -> dict:
    """Plots, sample overlays, summary.json and the printed summary table (rank 0). Plots and
    samples are optional extras: if one cannot be written, a warning says so and the run still ends
    with its summary."""
    summary = {
        "run_dir": str(run),
        "iterations": state["iteration"],
        "wall_time_s": round(seconds, 2),
        "final": {
            **scalars(val),
            "per_class_iou": val["per_class_iou"],
            **({"heads": {h: scalars(m) for h, m in val["heads"].items()}} if "heads" in val else {}),
        },
        "best_mean_iu": state["best_mean_iu"],
        "best_iteration": state["best_iteration"],
        "checkpoints": {"last": str(run / "last.pt"), "best": str(run / "best.pt")},
        "metrics_log": str(run / "metrics.jsonl"),
        "config": str(run / "config.yaml"),
        "skipped_samples": len(skipped or {}),
    }
    if not world.is_main:
        return summary
    plots = optional(
        "plots",
        lambda: (
            plot_curves(read_metrics(run / "metrics.jsonl"), run / "plots")
            + [plot_confusion(val["confusion"], meta["class_names"], run / "plots" / "confusion.png")]
        ),
    )
    samples = optional("sample strips", lambda: save_samples(model, meta, val_set, cfg, device, run / "samples"))
    summary.update(plots=[str(p) for p in plots], samples=[str(p) for p in samples])
    write_json(run / "summary.json", summary)
    log_summary(cfg, state, val, meta["class_names"], run, seconds)
    if skipped:
        log.warning(
            "skipped %d bad training sample(s) in all (--skip-bad); `fcnseg data check %s` lists them",
            len(skipped),
            cfg.data,
        )
    return summary


def optional(what: str, make) -> list:
    """Run ``make()`` for an optional output; a failure to write it is one warning, not a lost run."""
    try:
        return make()
    except FcnsegError as exc:
        log.warning("%s not written: %s", what, exc)
        return []


def save_samples(
    model: nn.Module, meta: dict, dataset: Any, cfg: TrainConfig, device: torch.device, out_dir: Path
) -> list[Path]:
    """The first ``num_samples`` val images as image | truth | prediction PNGs."""
    net = unwrap(model)
    net.eval()
    paths = []
    for i in range(min(cfg.num_samples, len(dataset))):
        image, mask = dataset[i]
        pred = predict_logits(
            net,
            image[None],
            normalization=meta["normalization"],
            device=device,
            precision=cfg.precision,
            channels_last=cfg.channels_last,
        ).argmax(1)[0]
        paths.append(out_dir / f"sample_{i:02d}.png")
        save_sample_strip(
            image.permute(1, 2, 0).numpy(),
            mask.numpy(),
            pred.cpu().numpy(),
            meta["palette"],
            paths[-1],
            class_names=meta["class_names"],
            ignore_index=cfg.ignore_index,
        )
    net.train()
    return paths
