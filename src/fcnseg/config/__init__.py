"""Training configuration: the schema (``fcnseg.config.schema``: TrainConfig, field metadata,
``coerce``, ``arg_type``) and where values come from (``fcnseg.config.sources``: presets, YAML/TOML
files, command-line options, resumed runs). ``from fcnseg.config import X`` works for both."""

from fcnseg.config.schema import (FIELDS, DEVICE_PATTERN, TrainConfig, arg_type, check_option,  # noqa: F401
                                  coerce, config_from_dict, data_spec_problem, device_problem, field_type,
                                  fields_of, option, range_problem, scale_range_problem, zero_or_between, _base_type, _opt,
                                  MAX_CLASSES, MAX_CROP, MAX_SEED, MAX_SIDE, MIN_SIDE)
from fcnseg.config.sources import (DATASET_SPLITS, RESUME_FIXED, add_config_arguments,  # noqa: F401
                                   check_resume_unchanged, dataset_split_defaults, list_presets, load_config_file,
                                   load_preset, overrides_from_args, resolve_config, save_config)

def __getattr__(name: str):
    """``resume_config`` reads a checkpoint, so it lives with checkpoints (fcnseg.engine.checkpoint);
    this keeps ``from fcnseg.config import resume_config`` working for existing callers."""
    if name == "resume_config":
        from fcnseg.engine.checkpoint import resume_config

        return resume_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
