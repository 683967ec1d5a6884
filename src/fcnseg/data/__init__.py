"""Datasets, transforms and loaders.

load_dataset(spec, split)            a dataset from a spec string (see fcnseg.data.base)
build_loader(dataset, ...)           a DataLoader that pads batches and reports bad files
class_frequencies, median_frequency_weights
TrainTransform, PadCollate           (fcnseg.data.transforms)
mean_pixel                           (fcnseg.data.normalize; normalize itself is
                                     fcnseg.data.normalize.normalize: the module has its name)
"""

from fcnseg._lazy import lazy_exports

_EXPORTS = {
    "load_dataset": "fcnseg.data.base",
    "list_formats": "fcnseg.data.base",
    "SegmentationDataset": "fcnseg.data.base",
    "build_loader": "fcnseg.data.loader",
    "class_frequencies": "fcnseg.data.stats",
    "median_frequency_weights": "fcnseg.data.stats",
    "TrainTransform": "fcnseg.data.transforms",
    "PadCollate": "fcnseg.data.transforms",
    "mean_pixel": "fcnseg.data.normalize",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
