"""The training configuration's schema: one dataclass whose fields carry their help text and their
constraints, and the one place values are checked (``coerce``; ``arg_type`` for options of other
commands). Where values come from (presets, files, the command line, a resumed run) is
fcnseg.config.sources.

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
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from fcnseg.errors import FcnsegError


def option(
    default: Any,
    help: str,
    choices: tuple | None = None,
    *,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    check: Any = None,
) -> Any:
    """A dataclass field carrying its --help text and its constraints as metadata: allowed values
    (``choices``), a range (``min``/``max`` inclusive, ``above``/``below`` exclusive) and ``check``, a
    function returning what is wrong with a value (or None). ``coerce`` enforces them all, for
    presets, config files, the command line and resumed runs alike.

    Public and stable: any dataclass of options (TrainConfig, serving's ServeConfig) declares its
    fields with ``option`` and checks values with ``coerce(name, value, where, schema=ThatClass)``;
    ``field_type`` gives a field's underlying type, ``add_arguments`` one --option per field."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "above": above, "below": below, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


_opt = option  # the short name the TrainConfig table below uses


DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def device_problem(value: str) -> str | None:
    """What is wrong with a --device value, or None (its spelling; devices.resolve_device then
    checks that the device exists here)."""
    if DEVICE_PATTERN.fullmatch(str(value).strip().lower()):
        return None
    return "must be auto, cpu, cuda or cuda:N (e.g. cuda:0)"


def scale_range_problem(value: list) -> str | None:
    if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return "must be two numbers MIN,MAX, e.g. 0.5,2.0"
    lo, hi = value
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        return "must be two positive numbers with MIN <= MAX, e.g. 0.5,2.0"
    return None


def data_spec_problem(value: str) -> str | None:
    if not value:
        return None
    from fcnseg.data.base import parse_spec  # lazily: the data layer is not needed to read configs

    try:
        parse_spec(value)
    except FcnsegError as exc:
        return str(exc).split(";")[-1].strip().replace("use one of", "must be one of").replace("write it as", "must be")
    return None


# Bounds of numbers a user types, checked where they are parsed (before any work); each is far beyond
# any sensible use, so only typos and mistakes meet them. (predict/serve's --tile and --scales:
# fcnseg.predict_options.)
MAX_SEED = 2**63  # torch.manual_seed takes 64 bits; seeds are mixed as 63-bit numbers (engine.rng)
MAX_CROP = 8192  # --crop-size: a square crop of 8192 px is 268 MB of float input per image
MAX_CLASSES = 4096  # a model's class count (checkpoints claiming more are refused on reading)
MIN_SIDE, MAX_SIDE = 32, 16384  # quantize --max-side: calibration images must still look like images


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def zero_or_between(low: int, high: int, zero: str) -> Any:
    """A ``check`` for options where 0 has a meaning of its own (``zero``) and others lie in [low, high]."""

    def problem(value: int) -> str | None:
        return None if value == 0 or low <= value <= high else f"must be 0 ({zero}) or between {low} and {high}"

    return problem


def range_problem(
    value: float,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> str | None:
    """What is wrong with ``value`` for these bounds (NaN and infinity never pass), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    parts = []
    if min is not None:
        parts.append(f">= {_number(min)}")
    if above is not None:
        parts.append(f"> {_number(above)}")
    if max is not None:
        parts.append(f"<= {_number(max)}")
    if below is not None:
        parts.append(f"< {_number(below)}")
    ok = (
        (min is None or value >= min)
        and (above is None or value > above)
        and (max is None or value <= max)
        and (below is None or value < below)
    )
    return None if ok else "must be " + " and ".join(parts)


def check_option(label: str, value: Any, meta: dict) -> None:
    """FcnsegError naming ``label`` when ``value`` breaks the field's constraints (see ``_opt``)."""
    if value is None:
        return
    problem = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = range_problem(value, meta.get("min"), meta.get("max"), meta.get("above"), meta.get("below"))
    if problem is None and meta.get("check") is not None:
        problem = meta["check"](value)
    if problem:
        raise FcnsegError(f"{label} {problem}, got {value!r}")


def arg_type(typ: type, *, name: str = "", choices: tuple | None = None, **bounds) -> Any:
    """An argparse ``type=`` for commands whose options are not TrainConfig fields (predict,
    evaluate, data): the same parsing and the same range checks as config values, one-line errors."""
    meta = {"choices": choices, "check": bounds.pop("check", None), **bounds}

    def parse(text: str) -> Any:
        try:
            if typ is int:
                as_float = float(text)
                if not as_float.is_integer():
                    raise ValueError
                value = int(as_float)
            else:
                value = typ(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expects {typ.__name__}, got {text!r}") from None
        if choices and value not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, choices))}, got {text!r}")
        try:
            check_option("", value, meta)
        except FcnsegError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None
        return value

    parse.__name__ = name or typ.__name__  # argparse names the type in its messages
    return parse


@dataclass
class TrainConfig:
    """Everything a training run needs. See ``fcnseg train --help`` for the meaning of each field."""

    # data
    data: str = _opt(
        "",
        "dataset spec: shapes, voc:PATH, sbd:PATH, voc-aug:VOC,SBD, cityscapes:PATH, folder:PATH, nyud:PATH, "
        "instances:PATH",
        check=data_spec_problem,
    )
    modality: str = _opt(
        "rgb",
        "input the model sees: rgb, hha (depth as HHA) or rgb-hha (6 channels, for the *-fusion models); "
        "hha and rgb-hha need data with depth (nyud:PATH)",
        ("rgb", "hha", "rgb-hha"),
    )
    train_split: str = _opt("train", "split to train on (voc-aug: train_aug unless set)")
    val_split: str = _opt("val", "split to evaluate on (voc-aug: seg11valid unless set)")
    max_val_images: int | None = _opt(None, "evaluate on at most this many val images (None = all)", min=1)
    workers: int = _opt(0, "data-loading worker processes", min=0, max=256)
    skip_bad: bool = _opt(
        False, "skip unreadable training samples with a warning naming each file, instead of stopping"
    )
    # model
    model: str = _opt("fcn8s", "model name (see `fcnseg models`)")
    backbone: str | None = _opt(None, "backbone network (default: the model's own, e.g. vgg16)")
    geometry: str | None = _opt(
        None, "layer geometry: 'caffe' (the paper's 100-pixel pad and crops) or 'same' (default: the model's own)"
    )
    width: float = _opt(1.0, "channel-width multiplier (e.g. 0.25 for a small fast model)", above=0, max=16)
    model_options: dict = _opt({}, "extra keyword arguments for create_model, e.g. '{learn_final_upsample: true}'")
    backbone_weights: str | None = _opt(None, "ImageNet weight file for the backbone (torchvision key names)")
    init_from: str | None = _opt(None, "checkpoint to initialise matching layers from (staged 32s -> 16s -> 8s)")
    normalization: str = _opt("imagenet", "input normalisation, stored in the checkpoint", ("imagenet", "caffe"))
    # optimisation
    iterations: int = _opt(1000, "number of optimiser steps", min=1, max=10**9)
    batch_size: int = _opt(1, "images per step (per process); > 1 pads with the padding collate", min=1, max=4096)
    optimizer: str = _opt("sgd", "optimiser", ("sgd", "adamw"))
    lr: float = _opt(1e-3, "base learning rate (biases get lr * bias_lr_mult)", min=0)
    momentum: float = _opt(0.9, "SGD momentum", min=0, below=1)
    weight_decay: float = _opt(5e-4, "weight decay (not applied to biases or norm layers unless bias_decay)", min=0)
    bias_lr_mult: float = _opt(2.0, "learning-rate multiplier for biases (the paper uses 2)", min=0)
    bias_decay: bool = _opt(False, "apply weight decay to biases too")
    lr_schedule: str = _opt("constant", "learning-rate schedule", ("constant", "poly"))
    poly_power: float = _opt(0.9, "exponent of the poly schedule: lr * (1 - it/iterations) ** power", above=0)
    warmup_iters: int = _opt(0, "linear learning-rate warm-up steps", min=0, max=10**9)
    # loss
    loss_reduction: str = _opt(
        "mean", "'sum' = unnormalised loss as in the paper, 'mean' over labelled pixels", ("mean", "sum")
    )
    class_weights: str | None = _opt(None, "'median' (median-frequency balancing) or a file with one weight per class")
    weight_map: bool = _opt(
        False,
        "U-Net's weight map: median-frequency class balance + 10 exp(-(d1+d2)^2 / 50) on the gaps between "
        "objects (needs --data instances:PATH; replaces --class-weights)",
    )
    loss_sample_prob: float = _opt(
        1.0, "keep each output cell's loss with this probability (paper Section 3.4)", above=0, max=1
    )
    ignore_index: int = _opt(255, "label ignored by loss and metrics", min=0, max=255)
    # augmentation
    crop_size: int | None = _opt(
        None, "random crop (square, pixels) after scaling; padded if smaller", min=1, max=MAX_CROP
    )
    scale_range: list | None = _opt(None, "random rescale range, e.g. 0.5,2.0", check=scale_range_problem)
    hflip: bool = _opt(False, "random horizontal flips")
    jitter: float = _opt(0.0, "colour jitter strength", min=0)
    elastic: float = _opt(
        0.0,
        "elastic deformation: pixels of random displacement on a 3x3 grid, bicubic (U-Net: 10; 0 = off)",
        min=0,
        max=100,
    )
    # evaluation, logging, checkpoints
    eval_every: int = _opt(0, "evaluate on the val split every N iterations (0 = only at the end)", min=0)
    checkpoint_every: int = _opt(0, "write last.pt every N iterations (0 = at evaluations and at the end)", min=0)
    log_every: int = _opt(
        10, "log the training loss (and, when stderr is not a terminal, a progress line) every N iterations", min=0
    )
    tensorboard: bool = _opt(False, "also write TensorBoard scalars to RUN/tensorboard (needs the [tensorboard] extra)")
    num_samples: int = _opt(4, "val images rendered as image | truth | prediction in samples/", min=0, max=1000)
    # speed and reproducibility
    precision: str = _opt(
        "fp32",
        "autocast precision; 'auto' = bf16 where the CPU/GPU runs it fast (AVX512-BF16/AMX), else fp32",
        ("fp32", "bf16", "fp16", "auto"),
    )
    channels_last: bool = _opt(False, "channels_last memory format (faster with bf16 on CPU)")
    compile: bool = _opt(False, "torch.compile the model")
    device: str = _opt("auto", "'cpu', 'cuda', 'cuda:N' or 'auto'", check=device_problem)
    seed: int = _opt(0, "random seed; a CPU run with the same seed is repeatable", min=0, below=MAX_SEED)
    # run directory
    out: str = _opt("runs/train", "run directory (config, checkpoints, metrics, plots, samples)")
    resume: str | None = _opt(None, "continue the run in this directory exactly where its last.pt left off")
    progress: bool = _opt(True, "show a progress bar when stderr is a terminal (--no-progress hides only the bar)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def fields_of(schema: type) -> dict[str, dataclasses.Field]:
    """name -> field of a dataclass of options (TrainConfig's are FIELDS)."""
    return FIELDS if schema is TrainConfig else {f.name: f for f in dataclasses.fields(schema)}


# ---------------------------------------------------------------------------------------------
# values: checking and coercion


def field_type(f: dataclasses.Field, schema: type = None) -> tuple[type, bool]:
    """(underlying type, optional?) of a field annotation such as ``int | None``."""
    hint = typing.get_type_hints(schema or TrainConfig)[f.name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def coerce(name: str, value: Any, where: str, schema: type = None, command: str = "train") -> Any:
    """Check/convert ``value`` for field ``name`` of ``schema`` (TrainConfig unless given); ``where``
    names the source for error messages, ``command`` the `fcnseg COMMAND --help` to point to."""
    fields = fields_of(schema or TrainConfig)
    if name not in fields:
        close = [k for k in fields if k.startswith(name[:3])]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise FcnsegError(f"{where}: unknown option {name!r}{hint}; see `fcnseg {command} --help`")
    f = fields[name]
    typ, optional = field_type(f, schema)
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
            if typ is list and any(isinstance(v, str) for v in value):
                raise ValueError
            if not isinstance(value, typ):
                raise ValueError
        else:
            value = str(value)
    except (ValueError, TypeError, yaml.YAMLError):
        kind = "a list of numbers, e.g. 0.5,2.0" if typ is list else typ.__name__
        raise FcnsegError(f"{where}: option {name!r} expects {kind}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise FcnsegError(f"{where}: option {name!r} must be one of {', '.join(choices)}, got {value!r}")
    check_option(f"{where}: option {name!r}", value, f.metadata)
    return value


def config_from_dict(values: dict, where: str = "config") -> TrainConfig:
    """Rebuild a TrainConfig from a saved mapping (e.g. the one inside a checkpoint)."""
    return TrainConfig(**{k: coerce(k, v, where) for k, v in values.items()})


_base_type = field_type  # older name, kept for callers
