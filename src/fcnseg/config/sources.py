"""Where a training configuration comes from: named presets, YAML/TOML files, command-line options
and resumed runs, merged and checked through the schema (fcnseg.config.schema).

Values are merged in this order, later winning:

    dataclass defaults  <  preset (``--preset NAME``, ``src/fcnseg/presets/NAME.yaml``)
                        <  config file (``--config FILE``)  <  command-line options

A config file may itself name a preset with ``preset: NAME``; ``--preset`` on the command line wins.
The resolved config is written to the run directory as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fcnseg.config.schema import FIELDS, TrainConfig, coerce, field_type
from fcnseg.errors import FcnsegError


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


def save_config(config: TrainConfig, path: str | Path) -> None:
    from fcnseg.files import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one --option per TrainConfig field; unset options stay out of the namespace."""
    defaults = TrainConfig()
    for name, f in FIELDS.items():
        typ, _ = field_type(f)
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


# Options a resumed run may not change, and why: the checkpoint's weights, optimiser state and
# position in the batch stream would no longer fit them.
RESUME_FIXED = {
    **dict.fromkeys(("model", "backbone", "geometry", "width", "model_options", "normalization"),
                    "it would change the model's architecture"),
    "optimizer": "the saved optimiser state belongs to the run's optimiser",
    **dict.fromkeys(("data", "train_split", "batch_size", "seed"),
                    "the checkpoint's position in the training data would no longer match"),
}


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The config of the run in ``run_dir`` with ``overrides`` on top, set to resume it.

    Everything is checked before anything is written: the run's last.pt must exist, its saved
    config is the base (config.yaml only where the checkpoint predates saving one), and an
    override of an option in ``RESUME_FIXED`` that differs from the run's value is refused with one
    line. Options that do not change the maths (``iterations`` to extend a run, ``eval_every``,
    ``workers``, ``progress``, ...) may be overridden."""
    from fcnseg.files import safe_torch_load

    run = Path(run_dir)
    saved = run / "config.yaml"
    last = run / "last.pt"
    if not run.is_dir():
        raise FcnsegError(f"cannot resume: {run} is not a folder; pass a run directory written by `fcnseg train`")
    if not last.is_file():
        raise FcnsegError(f"cannot resume: {last} does not exist (the run stopped before its first checkpoint); "
                          "start it again without --resume")
    ckpt = safe_torch_load(last, "checkpoint")
    train_state = ckpt.get("train_state") if isinstance(ckpt, dict) else None
    if not isinstance(train_state, dict):
        raise FcnsegError(f"cannot resume from {last}: it holds no training state; pass a run directory "
                          "written by `fcnseg train`")
    if isinstance(train_state.get("config"), dict):
        base, where = train_state["config"], f"checkpoint {last}"
    elif saved.is_file():
        base, where = load_config_file(saved), f"config file {saved}"
    else:
        raise FcnsegError(f"cannot resume: neither {last} nor {saved} holds the run's config")
    values = {k: coerce(k, v, where) for k, v in base.items() if k in FIELDS}
    new = {**values, **{k: coerce(k, v, "command line") for k, v in (overrides or {}).items()}}
    check_resume_unchanged(values, new, run)
    new.update(resume=str(run), out=str(run))
    return TrainConfig(**new)


def check_resume_unchanged(saved: dict, new: dict, run: str | Path) -> None:
    """FcnsegError (one line) when ``new`` changes an option of ``RESUME_FIXED`` from ``saved``."""
    defaults = TrainConfig()
    for key, why in RESUME_FIXED.items():
        before, after = saved.get(key, getattr(defaults, key)), new.get(key, getattr(defaults, key))
        if before != after:
            raise FcnsegError(f"cannot resume {run} with --{key.replace('_', '-')} {after} (the run used "
                              f"{before!r}): {why}; start a new run with --init-from {Path(run) / 'last.pt'} "
                              "instead")
