"""Training configuration: one dataclass, named presets, config files and command-line overrides.

Every field of :class:`TrainConfig` is an option of ``fcnseg train`` (``iterations`` ->
``--iterations``, ``channels_last`` -> ``--channels-last/--no-channels-last``) and a key of a YAML or
TOML config file. Values are merged in this order, later winning:

    dataclass defaults  <  preset (``--preset NAME``, ``src/fcnseg/presets/NAME.yaml``)
                        <  config file (``--config FILE``)  <  command-line options

A config file may itself name a preset with ``preset: NAME``; ``--preset`` on the command line wins.
The resolved config is written to the run directory as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fcnseg.errors import FcnsegError


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A dataclass field carrying its --help text (and allowed values) as metadata."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run needs. See ``fcnseg train --help`` for the meaning of each field."""

    # data
    data: str = _opt("", "dataset spec: shapes, voc:PATH, sbd:PATH, voc-aug:VOC,SBD, cityscapes:PATH, folder:PATH")
    train_split: str = _opt("train", "split to train on (voc-aug: train_aug unless set)")
    val_split: str = _opt("val", "split to evaluate on (voc-aug: seg11valid unless set)")
    max_val_images: int | None = _opt(None, "evaluate on at most this many val images (None = all)")
    workers: int = _opt(0, "data-loading worker processes")
    skip_bad: bool = _opt(False, "skip unreadable training samples with a warning naming each file, instead of stopping")
    # model
    model: str = _opt("fcn8s", "model name (see `fcnseg models`)")
    backbone: str | None = _opt(None, "backbone network (default: the model's own, e.g. vgg16)")
    geometry: str | None = _opt(None, "layer geometry: 'caffe' (the paper's 100-pixel pad and crops) or 'same' "
                                      "(default: the model's own)")
    width: float = _opt(1.0, "channel-width multiplier (e.g. 0.25 for a small fast model)")
    model_options: dict = _opt({}, "extra keyword arguments for create_model, e.g. '{learn_final_upsample: true}'")
    backbone_weights: str | None = _opt(None, "ImageNet weight file for the backbone (torchvision key names)")
    init_from: str | None = _opt(None, "checkpoint to initialise matching layers from (staged 32s -> 16s -> 8s)")
    normalization: str = _opt("imagenet", "input normalisation, stored in the checkpoint", ("imagenet", "caffe"))
    # optimisation
    iterations: int = _opt(1000, "number of optimiser steps")
    batch_size: int = _opt(1, "images per step (per process); > 1 pads with the padding collate")
    optimizer: str = _opt("sgd", "optimiser", ("sgd", "adamw"))
    lr: float = _opt(1e-3, "base learning rate (biases get lr * bias_lr_mult)")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "weight decay (not applied to biases or norm layers unless bias_decay)")
    bias_lr_mult: float = _opt(2.0, "learning-rate multiplier for biases (the paper uses 2)")
    bias_decay: bool = _opt(False, "apply weight decay to biases too")
    lr_schedule: str = _opt("constant", "learning-rate schedule", ("constant", "poly"))
    poly_power: float = _opt(0.9, "exponent of the poly schedule: lr * (1 - it/iterations) ** power")
    warmup_iters: int = _opt(0, "linear learning-rate warm-up steps")
    # loss
    loss_reduction: str = _opt("mean", "'sum' = unnormalised loss as in the paper, 'mean' over labelled pixels", ("mean", "sum"))
    class_weights: str | None = _opt(None, "'median' (median-frequency balancing) or a file with one weight per class")
    loss_sample_prob: float = _opt(1.0, "keep each output cell's loss with this probability (paper Section 3.4)")
    ignore_index: int = _opt(255, "label ignored by loss and metrics")
    # augmentation
    crop_size: int | None = _opt(None, "random crop (square, pixels) after scaling; padded if smaller")
    scale_range: list | None = _opt(None, "random rescale range, e.g. 0.5,2.0")
    hflip: bool = _opt(False, "random horizontal flips")
    jitter: float = _opt(0.0, "colour jitter strength")
    # evaluation, logging, checkpoints
    eval_every: int = _opt(0, "evaluate on the val split every N iterations (0 = only at the end)")
    checkpoint_every: int = _opt(0, "write last.pt every N iterations (0 = at evaluations and at the end)")
    log_every: int = _opt(10, "log the training loss (and, when stderr is not a terminal, a progress line) every N iterations")
    tensorboard: bool = _opt(False, "also write TensorBoard scalars to RUN/tensorboard (needs the [tensorboard] extra)")
    num_samples: int = _opt(4, "val images rendered as image | truth | prediction in samples/")
    # speed and reproducibility
    precision: str = _opt("fp32", "autocast precision; 'auto' = bf16 where the CPU/GPU runs it fast "
                                  "(AVX512-BF16/AMX), else fp32", ("fp32", "bf16", "fp16", "auto"))
    channels_last: bool = _opt(False, "channels_last memory format (faster with bf16 on CPU)")
    compile: bool = _opt(False, "torch.compile the model")
    device: str = _opt("auto", "'cpu', 'cuda', 'cuda:N' or 'auto'")
    seed: int = _opt(0, "random seed; a CPU run with the same seed is repeatable")
    # run directory
    out: str = _opt("runs/train", "run directory (config, checkpoints, metrics, plots, samples)")
    resume: str | None = _opt(None, "continue the run in this directory exactly where its last.pt left off")
    progress: bool = _opt(True, "show a progress bar when stderr is a terminal (--no-progress hides only the bar)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


# ---------------------------------------------------------------------------------------------
# values: checking and coercion


def _base_type(f: dataclasses.Field) -> tuple[type, bool]:
    """(underlying type, optional?) of a field annotation such as ``int | None``."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def coerce(name: str, value: Any, where: str) -> Any:
    """Check/convert ``value`` for field ``name``; ``where`` names the source for error messages."""
    if name not in FIELDS:
        close = [k for k in FIELDS if k.startswith(name[:3])]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise FcnsegError(f"{where}: unknown option {name!r}{hint}; see `fcnseg train --help`")
    f = FIELDS[name]
    typ, optional = _base_type(f)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise FcnsegError(f"{where}: option {name!r} needs a value")
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                    raise ValueError
                value = value.lower() in ("true", "yes", "1", "on")
            elif not isinstance(value, bool):
                raise ValueError
        elif typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif typ is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif typ in (list, dict):
            if isinstance(value, str):
                value = yaml.safe_load(f"[{value}]" if typ is list and "[" not in value else value)
            if typ is list and isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, typ):
                raise ValueError
        else:
            value = str(value)
    except (ValueError, TypeError, yaml.YAMLError):
        raise FcnsegError(f"{where}: option {name!r} expects {typ.__name__}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise FcnsegError(f"{where}: option {name!r} must be one of {', '.join(choices)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# sources: presets, files, command line


def list_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files("fcnseg").joinpath("presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    """The raw key/value mapping of a shipped preset."""
    path = resources.files("fcnseg").joinpath("presets") / f"{name}.yaml"
    if not path.is_file():
        raise FcnsegError(f"unknown preset {name!r}; choose one of {', '.join(list_presets())}")
    return _mapping(yaml.safe_load(path.read_text()), f"preset {name}")


def load_config_file(path: str | Path) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FcnsegError(f"config file {path} does not exist; check the path")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise FcnsegError(f"config file {path} cannot be parsed ({first}); fix its syntax") from None
    return _mapping(data, f"config file {path}")


def _mapping(data: Any, where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FcnsegError(f"{where} must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict | None = None) -> TrainConfig:
    """Merge defaults < preset < config file < overrides into a checked TrainConfig."""
    file_values = load_config_file(config_file) if config_file else {}
    preset = preset or file_values.pop("preset", None)
    file_values.pop("preset", None)
    layers = [(load_preset(preset) if preset else {}, f"preset {preset}"),
              (file_values, f"config file {config_file}"),
              (overrides or {}, "command line")]
    values: dict = {}
    for mapping, where in layers:
        for key, value in mapping.items():
            values[key] = coerce(key, value, where)
    for key, split in dataset_split_defaults(values.get("data", "")).items():
        values.setdefault(key, split)
    return TrainConfig(**values)


# Splits a dataset format trains and validates on unless told otherwise. VOC+SBD: the paper's
# train_aug (VOC train + SBD, minus VOC val) and seg11valid (the 736 VOC 2011 val images outside SBD
# train); VOC's own val overlaps SBD train, so validating on it would score training images.
DATASET_SPLITS = {"voc-aug": {"train_split": "train_aug", "val_split": "seg11valid"}}


def dataset_split_defaults(data: str) -> dict:
    return dict(DATASET_SPLITS.get(str(data).split(":", 1)[0], {}))


def config_from_dict(values: dict, where: str = "config") -> TrainConfig:
    """Rebuild a TrainConfig from a saved mapping (e.g. the one inside a checkpoint)."""
    return TrainConfig(**{k: coerce(k, v, where) for k, v in values.items()})


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one --option per TrainConfig field; unset options stay out of the namespace."""
    defaults = TrainConfig()
    for name, f in FIELDS.items():
        typ, _ = _base_type(f)
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"] + (f"; one of {', '.join(choices)}" if choices else "") + f" (default: {default!r})"
        if typ is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text,
                                metavar=name.upper(), choices=choices)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the user set explicitly on the command line."""
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The config of the run in ``run_dir`` (its config.yaml) with ``overrides`` on top, set to resume it.

    Only options that do not change the maths are meant to be overridden (``iterations`` to extend a
    run, ``eval_every``, ``workers``, ``progress``, ...)."""
    run = Path(run_dir)
    saved = run / "config.yaml"
    if not saved.is_file():
        raise FcnsegError(f"cannot resume: {saved} does not exist; pass a run directory written by `fcnseg train`")
    values = {k: coerce(k, v, f"config file {saved}") for k, v in load_config_file(saved).items()}
    for key, value in (overrides or {}).items():
        values[key] = coerce(key, value, "command line")
    values.update(resume=str(run), out=str(run))
    return TrainConfig(**values)
