"""fcnseg: Fully Convolutional Networks for semantic segmentation.

The public API is small and imported lazily (importing fcnseg does not import torch):

    create_model                   fcnseg.weights (= fcnseg.models.create_model; takes weights="fcn8s-voc")
    list_models                    fcnseg.models
    list_weights                   fcnseg.weights
    load_dataset                   fcnseg.data
    ConfusionMatrix                fcnseg.engine.metrics
    load_checkpoint                fcnseg.engine.checkpoint
    train, evaluate                fcnseg.engine
    Segmenter                      fcnseg.inference
    FcnsegError                    fcnseg.errors
"""

from fcnseg._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "fcnseg.weights.api",  # models.create_model + weights= / registered backbone names
    "list_models": "fcnseg.models",
    "list_weights": "fcnseg.weights.registry",
    "load_dataset": "fcnseg.data",
    "ConfusionMatrix": "fcnseg.engine.metrics",
    "load_checkpoint": "fcnseg.engine.checkpoint",
    "train": "fcnseg.engine",
    "evaluate": "fcnseg.engine",
    "Segmenter": "fcnseg.inference",
    "FcnsegError": "fcnseg.errors",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
