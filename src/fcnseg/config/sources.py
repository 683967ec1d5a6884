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

from fcnseg.config.schema import TrainConfig, coerce, field_type, fields_of
from fcnseg.errors import FcnsegError

# ---------------------------------------------------------------------------------------------
# sources: presets, files, command line


def list_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(
        p.name[:-5] for p in resources.files("fcnseg").joinpath("presets").iterdir() if p.name.endswith(".yaml")
    )


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


def resolve_config(
    preset: str | None = None, config_file: str | Path | None = None, overrides: dict | None = None
) -> TrainConfig:
    """Merge defaults < preset < config file < overrides into a checked TrainConfig."""
    file_values = load_config_file(config_file) if config_file else {}
    preset = preset or file_values.pop("preset", None)
    file_values.pop("preset", None)
    layers = [
        (load_preset(preset) if preset else {}, f"preset {preset}"),
        (file_values, f"config file {config_file}"),
        (overrides or {}, "command line"),
    ]
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


def add_config_arguments(parser: argparse.ArgumentParser, schema: type = TrainConfig) -> None:
    """Add one --option per field of ``schema`` (TrainConfig unless given; any dataclass whose fields
    are declared with ``option``); unset options stay out of the namespace, so ``overrides_from_args``
    returns only what the user typed, for ``coerce`` to check."""
    defaults = schema()
    for name, f in fields_of(schema).items():
        typ, _ = field_type(f, schema)
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        choices = f.metadata.get("choices")
        help_text = (
            f.metadata["help"] + (f"; one of {', '.join(choices)}" if choices else "") + f" (default: {default!r})"
        )
        if typ is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                flag, dest=name, default=argparse.SUPPRESS, help=help_text, metavar=name.upper(), choices=choices
            )


def overrides_from_args(args: argparse.Namespace, schema: type = TrainConfig) -> dict:
    """The fields of ``schema`` the user set explicitly on the command line."""
    return {name: getattr(args, name) for name in fields_of(schema) if hasattr(args, name)}


# Options a resumed run may not change, and why: the checkpoint's weights, optimiser state and
# position in the batch stream would no longer fit them.
RESUME_FIXED = {
    **dict.fromkeys(
        ("model", "backbone", "geometry", "width", "model_options", "normalization", "modality"),
        "it would change the model's architecture",
    ),
    "optimizer": "the saved optimiser state belongs to the run's optimiser",
    **dict.fromkeys(
        ("data", "train_split", "batch_size", "seed"),
        "the checkpoint's position in the training data would no longer match",
    ),
}


def check_resume_unchanged(saved: dict, new: dict, run: str | Path) -> None:
    """FcnsegError (one line) when ``new`` changes an option of ``RESUME_FIXED`` from ``saved``."""
    defaults = TrainConfig()
    for key, why in RESUME_FIXED.items():
        before, after = saved.get(key, getattr(defaults, key)), new.get(key, getattr(defaults, key))
        if before != after:
            raise FcnsegError(
                f"cannot resume {run} with --{key.replace('_', '-')} {after} (the run used "
                f"{before!r}): {why}; start a new run with --init-from {Path(run) / 'last.pt'} "
                "instead"
            )
