"""Training and evaluation.

    train(config) -> summary             fcnseg.engine.trainer (config: fcnseg.config.TrainConfig)
    evaluate(checkpoint_or_model, dataset, ...) -> metrics
    ConfusionMatrix                      fcnseg.engine.metrics
    save_checkpoint, load_checkpoint     fcnseg.engine.checkpoint
"""

from importlib import import_module

_EXPORTS = {
    "train": "fcnseg.engine.trainer",
    "evaluate": "fcnseg.engine.evaluator",
    "ConfusionMatrix": "fcnseg.engine.metrics",
    "save_checkpoint": "fcnseg.engine.checkpoint",
    "load_checkpoint": "fcnseg.engine.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fcnseg.engine' has no attribute {name!r}")
