"""Checkpoints: saving, reading, restoring a training run and resuming it, in one place.

A checkpoint is a plain dict of tensors and Python primitives (the format itself, with its
structure check and digest, is ``fcnseg.weights.format``, below engine so converters write the same):

    {
      "format": "fcnseg.checkpoint", "version": 1,
      "model": <state_dict>,
      "meta": ModelMeta.to_dict(),   # everything a predictor needs, nothing about training
                                     # (fcnseg.weights.meta: model, classes, palette, normalisation,
                                     # trained_on, data; older layouts still read)
      "train_state": {...} | None,   # optimiser, scheduler, iteration, RNG states, best metric, config
      "digest": "<sha256>",          # of model, meta and train_state (files.content_digest); checked on read
    }

Written atomically (files.save_torch), read with ``weights_only=True`` (never unpickles code); a
file whose bytes changed since it was saved is refused with one line naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg.config import (
    FIELDS,
    TrainConfig,
    check_resume_unchanged,
    coerce,
    load_config_file,
)
from fcnseg.engine.rng import capture_rng, restore_rng
from fcnseg.engine.runtime import Dist
from fcnseg.errors import FcnsegError
from fcnseg.files import safe_torch_load, save_torch
from fcnseg.weights.format import FORMAT, VERSION, build_model, check, payload  # noqa: F401

log = logging.getLogger("fcnseg.train")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (see ``fcnseg.files``)."""
    save_torch(obj, path)


def save_checkpoint(path: str | os.PathLike, model_state: dict, meta: dict, train_state: dict | None = None) -> None:
    """Write a checkpoint atomically, with its digest (see the module docstring for the layout)."""
    atomic_save(payload(model_state, meta, train_state), path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate an fcnseg checkpoint (marker, structure, digest); raises FcnsegError with the
    file name if it is not one or is damaged."""
    return check(safe_torch_load(path, "checkpoint"), path)


def model_from_checkpoint(ckpt: dict | str | os.PathLike, path_hint: str | None = None):
    """Build the model a checkpoint describes and load its weights. Returns (model, ModelMeta).
    For any model file (exports, converted formats, published names) use fcnseg.weights.open_model."""
    from fcnseg.weights.meta import ModelMeta

    if not isinstance(ckpt, dict):
        path_hint = str(ckpt)
        ckpt = load_checkpoint(ckpt)
    label = path_hint or "(in memory)"
    meta = ModelMeta.from_dict(ckpt["meta"], f"checkpoint {label}")
    return build_model(meta, ckpt["model"], label), meta


# ---------------------------------------------------------------------------------------------
# training checkpoints: save, restore, resume


def raise_diverged(run: Path, iteration: int, value: float | str) -> None:
    kept = run / "last.pt"
    where = f"the last good checkpoint {kept} is intact" if kept.exists() else "no checkpoint was written yet"
    raise FcnsegError(
        f"training diverged: loss is {value} at iteration {iteration}; stopped ({where}); "
        "lower --lr, check the data, or use --precision fp32"
    )


def per_rank(value: Any, world: Dist) -> list:
    """``value`` of every process, in rank order (all processes must call this together)."""
    if not world.enabled:
        return [value]
    import torch.distributed as dist

    gathered = [None] * world.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def save_training_checkpoint(
    path: Path,
    model: nn.Module,
    meta: dict,
    optimizer,
    scheduler,
    scaler,
    state: dict,
    cfg: TrainConfig,
    world: Dist,
    stream: tuple[int, int] = (0, 0),
) -> None:
    """Everything needed to continue exactly, including every process's random state and place in the
    batch stream; written by rank 0 only, never with non-finite weights. RUN/config.yaml is kept
    equal to the config the checkpoint records (so an edit made to it later is recognised on resume)."""
    rng_ranks = per_rank(capture_rng(), world)
    streams = per_rank(list(stream), world)
    if not world.is_main:
        return
    params = model.state_dict()
    if not all(torch.isfinite(t).all() for t in params.values() if t.is_floating_point()):
        raise_diverged(path.parent, state["iteration"], "finite but the weights are not")
    train_state = {
        **state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_ranks[0],
        "rng_ranks": rng_ranks,
        "stream": streams,
        "config": cfg.to_dict(),
    }
    if path.name == "last.pt":
        from fcnseg.config import save_config

        saved = path.parent / "config.yaml"
        if not saved.is_file() or _config_values(load_config_file(saved)) != _config_values(cfg.to_dict()):
            save_config(cfg, saved)
    save_checkpoint(path, params, meta, train_state)


def restore_training(
    ckpt: dict, model: nn.Module, optimizer, scheduler, scaler, state: dict, world: Dist
) -> tuple[int, int] | None:
    """Load weights, optimiser, schedule and this process's random state; returns this process's
    place in the batch stream (None: derive it from the iteration)."""
    ts = ckpt["train_state"]
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    if ts.get("scaler"):
        scaler.load_state_dict(ts["scaler"])
    for key in state:
        state[key] = ts.get(key, state[key])  # elapsed_s: absent in older checkpoints
    ranks, streams = ts.get("rng_ranks"), ts.get("stream")
    if ranks and len(ranks) == world.world_size:
        restore_rng(ranks[world.rank])
        return tuple(streams[world.rank]) if streams and len(streams) == world.world_size else None
    if world.enabled or (ranks and len(ranks) != world.world_size):
        log.warning(
            "resuming with %d process(es) a run saved with %d: it continues, but not bit-identically",
            world.world_size,
            len(ranks) if ranks else 1,
        )
        if world.enabled:
            return None  # keep this process's own seed (set before the restore)
    restore_rng(ts["rng"])
    return None


def load_resume_checkpoint(cfg: TrainConfig) -> dict | None:
    """The checkpoint ``cfg.resume`` continues (None for a new run), checked: it exists, its bytes
    match its digest, it holds a training state, and ``cfg`` changes nothing that must stay fixed."""
    if not cfg.resume:
        return None
    path = Path(cfg.resume) / "last.pt"
    if not path.is_file():
        raise FcnsegError(
            f"cannot resume: {path} does not exist (the run stopped before its first checkpoint); "
            "start it again without --resume"
        )
    ckpt = load_checkpoint(path)
    if not ckpt.get("train_state"):
        raise FcnsegError(
            f"cannot resume from {path}: it holds no training state; pass a run directory written by `fcnseg train`"
        )
    saved = ckpt["train_state"].get("config")
    if isinstance(saved, dict):  # also for library callers that skip resume_config
        check_resume_unchanged(saved, cfg.to_dict(), cfg.resume)
    return ckpt


def _config_values(mapping: dict, where: str = "config") -> dict:
    return {k: coerce(k, v, where) for k, v in mapping.items() if k in FIELDS and k not in ("resume", "out")}


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The config of the run in ``run_dir`` with ``overrides`` on top, set to resume it.

    Everything is checked before anything is written: the run's last.pt must exist and be intact
    (its digest), its saved config is the base (config.yaml only where the checkpoint predates
    saving one), an override of an option in ``RESUME_FIXED`` that differs from the run's value is
    refused with one line, and so is a config.yaml edited since the checkpoint was written, unless
    every edit is also given as an option (edits are applied explicitly, never silently dropped or
    silently overwritten). Options that do not change the maths (``iterations`` to extend a run,
    ``eval_every``, ``workers``, ``progress``, ...) may be overridden."""
    run = Path(run_dir)
    saved = run / "config.yaml"
    last = run / "last.pt"
    if not run.is_dir():
        raise FcnsegError(f"cannot resume: {run} is not a folder; pass a run directory written by `fcnseg train`")
    if not last.is_file():
        raise FcnsegError(
            f"cannot resume: {last} does not exist (the run stopped before its first checkpoint); "
            "start it again without --resume"
        )
    ckpt = load_checkpoint(last)
    train_state = ckpt.get("train_state")
    if not isinstance(train_state, dict):
        raise FcnsegError(
            f"cannot resume from {last}: it holds no training state; pass a run directory written by `fcnseg train`"
        )
    given = {k: coerce(k, v, "command line") for k, v in (overrides or {}).items()}
    if isinstance(train_state.get("config"), dict):
        values = _config_values(train_state["config"], f"checkpoint {last}")
        if saved.is_file():
            check_config_edits(values, _config_values(load_config_file(saved), f"config file {saved}"), given, run)
    elif saved.is_file():
        values = _config_values(load_config_file(saved), f"config file {saved}")
    else:
        raise FcnsegError(f"cannot resume: neither {last} nor {saved} holds the run's config")
    new = {**values, **given}
    check_resume_unchanged(values, new, run)
    new.update(resume=str(run), out=str(run))
    return TrainConfig(**new)


def check_config_edits(recorded: dict, edited: dict, given: dict, run: Path) -> None:
    """FcnsegError (one line) when RUN/config.yaml differs from the config last.pt recorded in a key
    the command line does not set to the edited value: the edit would otherwise be lost or applied
    unseen. The message lists the changed keys and the options that apply them."""
    defaults = TrainConfig().to_dict()
    changed = {k: v for k, v in edited.items() if v != recorded.get(k, defaults.get(k))}
    changed.update(
        {k: defaults[k] for k in recorded if k not in edited and recorded[k] != defaults[k] and k in defaults}
    )
    pending = {k: v for k, v in changed.items() if given.get(k, recorded.get(k)) != v}
    if not pending:
        return
    what = ", ".join(f"{k}: {recorded.get(k, defaults.get(k))!r} -> {v!r}" for k, v in pending.items())
    flags = " ".join(_as_option(k, v) for k, v in pending.items())
    raise FcnsegError(
        f"cannot resume {run}: {run / 'config.yaml'} was edited after last.pt was saved ({what}); "
        f"apply the edits as options, `fcnseg train --resume {run} {flags}`, or undo them"
    )


def _as_option(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + name.replace("_", "-")
    if isinstance(value, list):
        return f"{flag} {','.join(map(str, value))}"
    if isinstance(value, dict):
        return f"{flag} '{value}'"
    return f"{flag} {value}"
