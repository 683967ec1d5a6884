"""Training configuration: the schema (``fcnseg.config.schema``: TrainConfig, field metadata,
``coerce``, ``arg_type``) and where values come from (``fcnseg.config.sources``: presets, YAML/TOML
files, command-line options). ``from fcnseg.config import X`` works for both. Resuming a run reads its
checkpoint, so ``resume_config`` lives with checkpoints: ``fcnseg.engine.checkpoint``."""

from fcnseg.config.schema import (  # noqa: F401
    DEVICE_PATTERN,
    FIELDS,
    MAX_CLASSES,
    MAX_CROP,
    MAX_SEED,
    MAX_SIDE,
    MIN_SIDE,
    TrainConfig,
    _base_type,
    _opt,
    arg_type,
    check_option,
    coerce,
    config_from_dict,
    data_spec_problem,
    device_problem,
    field_type,
    fields_of,
    option,
    range_problem,
    scale_range_problem,
    zero_or_between,
)
from fcnseg.config.sources import (  # noqa: F401
    DATASET_SPLITS,
    RESUME_FIXED,
    add_config_arguments,
    check_resume_unchanged,
    dataset_split_defaults,
    list_presets,
    load_config_file,
    load_preset,
    overrides_from_args,
    resolve_config,
    save_config,
)
