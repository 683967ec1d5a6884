"""fcnseg: Fully Convolutional Networks for semantic segmentation.

The public API is small and imported lazily (importing fcnseg does not import torch):

    create_model, list_models      fcnseg.models
    load_dataset                   fcnseg.data
    ConfusionMatrix                fcnseg.engine.metrics
    load_checkpoint                fcnseg.engine.checkpoint
    train, evaluate                fcnseg.engine
    Segmenter                      fcnseg.inference
    FcnsegError                    fcnseg.errors
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "fcnseg.models",
    "list_models": "fcnseg.models",
    "load_dataset": "fcnseg.data",
    "ConfusionMatrix": "fcnseg.engine.metrics",
    "load_checkpoint": "fcnseg.engine.checkpoint",
    "train": "fcnseg.engine",
    "evaluate": "fcnseg.engine",
    "Segmenter": "fcnseg.inference",
    "FcnsegError": "fcnseg.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fcnseg' has no attribute {name!r}")
