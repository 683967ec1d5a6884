"""Instance labels (``instances:PATH``) and U-Net's weight map (Ronneberger et al. 2015, eq. 2).

The format lays data out like ``folder:PATH``, with instance masks::

    PATH/train/images/cell1.png    PATH/train/masks/cell1.png   (or .tif)
    PATH/val/images/...            PATH/val/masks/...

A mask holds one id per object (0 = background; 8- or 16-bit greyscale PNG or TIFF, ids need not be
consecutive). The semantic classes are ``background`` (id 0) and ``object`` (id > 0): evaluation,
prediction and `fcnseg data check` see those; training with ``--weight-map`` also reads the ids.

The weight map ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` makes the network learn
the thin background gaps between touching objects: ``w_c`` balances the class frequencies (the
training set's median-frequency weights, fcnseg.data.stats), ``d1``/``d2`` are the distances to the
nearest and second-nearest object, ``w0 = 10``, ``sigma = 5`` pixels (the paper's values). The
border term is put on background pixels, the gaps the paper's Fig. 3d shows; inside an object d1 = 0
and the term would only blur the object's own weights. The map is computed after augmentation
from the augmented ids (:class:`WeightMapTransform`), so it follows every crop and deformation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.data.base import IGNORE_INDEX, check_split, require_dir
from fcnseg.data.folder import report_entries, scan_folder
from fcnseg.data.io import PairedFileDataset
from fcnseg.errors import FcnsegError
from fcnseg.images import read_instance_ids
from fcnseg.palette import class_colours

W0 = 10.0  # the paper's border weight
SIGMA = 5.0  # the paper's border width, in pixels
CLASS_NAMES = ("background", "object")


def semantic_of(ids: np.ndarray) -> np.ndarray:
    """Instance ids -> class ids: 0 background, 1 object."""
    return (ids > 0).astype(np.uint8)


class InstanceDataset(PairedFileDataset):
    """Image / instance-mask pairs; items are (image, class mask) like every dataset, and
    :meth:`load_instances` gives the ids."""

    def __init__(self, samples: Sequence[tuple[Path, Path]], *, split: str, identity: str, check_files: bool = True):
        super().__init__(
            samples,
            lambda path: semantic_of(read_instance_ids(path)),
            class_names=CLASS_NAMES,
            palette=class_colours(None, len(CLASS_NAMES)),
            split=split,
            identity=identity,
            check_files=check_files,
        )

    def load_instances(self, index: int) -> np.ndarray:
        """(H, W) int32 instance ids of sample ``index`` (0 = background)."""
        return read_instance_ids(self.samples[index][1])


def open_instances(path: str, split: str, check_files: bool = True) -> InstanceDataset:
    root = require_dir(path, "instances dataset").resolve()
    splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    if not splits:
        raise FcnsegError(
            f"{root}: no <split>/images folder; lay the data out as {root}/train/images and {root}/train/masks "
            "(masks: instance ids, 0 = background)"
        )
    check_split(split, splits, f"instances dataset {root}")
    images, masks = scan_folder(root / split / "images"), scan_folder(root / split / "masks")
    unpaired = [(str(p), "image without mask") for s, p in images.files.items() if s not in masks.files]
    unpaired += [(str(p), "mask without image") for s, p in masks.files.items() if s not in images.files]
    if check_files and unpaired:
        first, problem = unpaired[0]
        raise FcnsegError(
            f"{first}: {problem} (files pair by stem; {len(unpaired)} unpaired); "
            "run `fcnseg data check` to list all problems"
        )
    report_entries(f"instances:{root}/{split}", images.problems + masks.problems + images.skipped + masks.skipped)
    samples = [(p, masks.files[s]) for s, p in images.files.items() if s in masks.files]
    dataset = InstanceDataset(samples, split=split, identity=f"instances:{root}/{split}", check_files=check_files)
    dataset.orphans = unpaired + images.problems + masks.problems
    return dataset


# ---------------------------------------------------------------------------------------------
# the weight map


def border_weights(ids: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on background pixels (``ids == 0``), 0 on objects;
    d1, d2: Euclidean distances in pixels to the nearest and second-nearest object (float32 H x W).

    Each object's distance transform is computed only within ``reach`` pixels of it, beyond which
    the term is below 1e-4 w0 (and counted as 0)."""
    from scipy.ndimage import distance_transform_edt, find_objects  # scipy is slow to import

    height, width = ids.shape
    reach = math.ceil(sigma * math.sqrt(2 * math.log(1e4)))
    d1 = np.full((height, width), np.inf, np.float32)
    d2 = np.full((height, width), np.inf, np.float32)
    for label, box in enumerate(find_objects(ids), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        cols = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        dist = distance_transform_edt(ids[rows, cols] != label).astype(np.float32)
        near, second = d1[rows, cols], d2[rows, cols]
        second[...] = np.minimum(second, np.maximum(near, dist))
        near[...] = np.minimum(near, dist)
    term = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return np.where(ids == 0, term, 0).astype(np.float32)


def weight_map(
    ids: np.ndarray, mask: np.ndarray, class_weights: np.ndarray, w0: float = W0, sigma: float = SIGMA
) -> np.ndarray:
    """Per-pixel loss weights: ``class_weights[mask]`` plus :func:`border_weights`; 0 where the mask
    is ``ignore`` (255) or beyond the class table."""
    table = np.zeros(256, np.float32)
    table[: len(class_weights)] = class_weights
    table[IGNORE_INDEX] = 0
    return table[np.clip(mask, 0, 255)] + border_weights(ids, w0, sigma)


class WithInstances(Dataset):
    """A view of an instance dataset whose items are (image, mask, instance ids) tensors."""

    def __init__(self, dataset: InstanceDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_name(self, index: int) -> str:
        return self.dataset.sample_name(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        return image, mask, torch.from_numpy(self.dataset.load_instances(index % len(self.dataset)))


class WeightMapTransform:
    """(image, mask, ids) -> (image, mask, per-pixel weights): ``transform`` (the training
    augmentation, or None) applied to all three alike, then :func:`weight_map` of the result."""

    def __init__(
        self, transform: Callable | None, class_weights: Sequence[float], w0: float = W0, sigma: float = SIGMA
    ):
        self.transform = transform
        self.class_weights = np.asarray(class_weights, np.float32)
        self.w0, self.sigma = w0, sigma

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor):
        if self.transform is not None:
            image, mask, ids = self.transform(image, mask, ids)
        weights = weight_map(ids.numpy(), mask.numpy(), self.class_weights, self.w0, self.sigma)
        return image, mask, torch.from_numpy(weights)


def check_weight_map(dataset, class_weights: str | None) -> None:
    """Before any work: --weight-map needs instance labels and brings its own class balance."""
    if not isinstance(dataset, InstanceDataset):
        raise FcnsegError(
            f"--weight-map needs instance labels, and {getattr(dataset, 'identity', '') or dataset!s} has none; "
            "use --data instances:PATH (masks of instance ids, 0 = background)"
        )
    if class_weights not in (None, "none"):
        raise FcnsegError(
            f"--weight-map balances the classes itself (median frequency); drop --class-weights {class_weights}"
        )


def with_weight_map(dataset, transform: Callable | None):
    """(dataset, transform) for training with the weight map, ``w_c`` being the median-frequency
    weights of ``dataset`` (see :func:`check_weight_map`)."""
    from fcnseg.data.stats import class_frequencies, median_frequency_weights

    check_weight_map(dataset, None)
    balance = median_frequency_weights(class_frequencies(dataset)).float().tolist()
    return WithInstances(dataset), WeightMapTransform(transform, balance)
