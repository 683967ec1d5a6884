"""Training and evaluation.

train(config) -> summary             fcnseg.engine.trainer (config: fcnseg.config.TrainConfig)
evaluate(checkpoint_or_model, dataset, ...) -> metrics
ConfusionMatrix                      fcnseg.engine.metrics
save_checkpoint, load_checkpoint     fcnseg.engine.checkpoint
"""

from fcnseg._lazy import lazy_exports

_EXPORTS = {
    "train": "fcnseg.engine.trainer",
    "evaluate": "fcnseg.engine.evaluator",
    "ConfusionMatrix": "fcnseg.engine.metrics",
    "save_checkpoint": "fcnseg.engine.checkpoint",
    "load_checkpoint": "fcnseg.engine.checkpoint",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
