"""`fcnseg train`: every TrainConfig field is an option (see fcnseg.config for the precedence rules)."""

from __future__ import annotations

import argparse

from fcnseg.config import add_config_arguments, list_presets, overrides_from_args, resolve_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation model",
        description="Train a model. Values come from, later winning: defaults < --preset < --config file < "
        "options on this command line. The resolved config is saved as RUN/config.yaml. "
        "Multi-process: torchrun --nproc_per_node N -m fcnseg train ...",
    )
    parser.add_argument(
        "--preset", metavar="NAME", help=f"named config shipped with fcnseg: {', '.join(list_presets())}"
    )
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of option: value pairs")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fcnseg.engine import train
    from fcnseg.engine.checkpoint import resume_config

    overrides = overrides_from_args(args)
    if overrides.get("resume"):
        config = resume_config(overrides.pop("resume"), overrides)
    else:
        config = resolve_config(args.preset, args.config, overrides)
        # a registered --backbone-weights name (e.g. vgg16) is fetched by train() once the data is checked
    train(config)  # under torchrun the CLI leaves the process group (cli/__init__.py)
    return 0
