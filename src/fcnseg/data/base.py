"""The dataset contract shared by every format, and `load_dataset(spec, split)`.

A dataset is a ``torch.utils.data.Dataset`` whose item ``i`` is ``(image, mask)``:

* ``image``: uint8 tensor (3, H, W), RGB;
* ``mask``: int64 tensor (H, W) of class ids, ``ignore_index`` (255) where the label is void.

It also knows ``class_names``, ``palette`` (one (r, g, b) per class), ``num_classes``,
``ignore_index`` and ``sample_name(i)`` (the file path or id to quote in messages). A sample that
cannot be read raises FcnsegError naming the file.

Spec strings say which dataset: ``shapes`` (built in), ``voc:PATH``, ``sbd:PATH``,
``voc-aug:VOC_PATH,SBD_PATH``, ``cityscapes:PATH``, ``folder:PATH``, ``pascal-context:PATH``,
``siftflow:PATH``, ``nyud:PATH``, ``instances:PATH`` (instance masks, fcnseg.data.instances).

A dataset may label its pixels a second way (SIFT Flow: geometric classes beside the semantic
ones): ``extra_targets`` names them (``ExtraTarget``) and ``load_extra(i, name)`` reads one. Item
``i`` stays ``(image, mask)``; only models with a head per target read the others, through
``WithTargets``, whose item is ``(image, masks)`` with the masks stacked (1 + K, H, W).

The input modality (``MODALITIES``): every dataset gives ``rgb`` (3 channels); a dataset with depth
(NYUDv2) can also give ``hha`` (3) or ``rgb-hha`` (6: RGB then HHA), chosen by ``modality=`` (a
model's metadata declares the one it takes; ``fcnseg evaluate`` opens the data with it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.errors import FcnsegError, did_you_mean

IGNORE_INDEX = 255
# input modality -> channels of the image tensor
MODALITIES: dict[str, int] = {"rgb": 3, "hha": 3, "rgb-hha": 6}


def bad_labels(mask: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> list[int]:
    """The label values in ``mask`` that are neither a class id (0..num_classes-1) nor ``ignore_index``."""
    if mask.size == 0 or (int(mask.max()) < num_classes and int(mask.min()) >= 0):
        return []  # the common case, without counting
    values = np.unique(mask)
    return [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_index]


def bad_labels_message(labels: list[int], num_classes: int, ignore_index: int = IGNORE_INDEX) -> str:
    """The one wording of this problem, shared by `fcnseg data check` and the training loader."""
    return f"labels {', '.join(map(str, labels))} are not classes (0..{num_classes - 1}) or {ignore_index}"


@dataclass(frozen=True)
class ExtraTarget:
    """A second labelling of a dataset's pixels, read only by a model with a head for it."""

    name: str  # the model head that predicts it, e.g. "geometric"
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class SegmentationDataset(Dataset):
    """Base class: subclasses set ``class_names``, ``palette``, ``split`` and implement
    ``__len__``, ``sample_name`` and ``load_arrays`` (numpy HxWx3 uint8 image, HxW integer mask)."""

    class_names: Sequence[str] = ()
    palette: Sequence[tuple[int, int, int]] = ()
    ignore_index: int = IGNORE_INDEX
    split: str = ""
    #: A string that identifies the data (format, root and split), used as a cache key.
    identity: str = ""
    #: Other labellings of the same pixels (see ``load_extra`` and ``WithTargets``).
    extra_targets: tuple[ExtraTarget, ...] = ()
    #: Mean IU over the classes present in the split's labels only (SIFT Flow, as the paper scores it).
    score_present_classes: bool = False
    #: What the image tensor holds (a key of MODALITIES), and what else this dataset can give.
    modality: str = "rgb"
    modalities: tuple[str, ...] = ("rgb",)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        raise NotImplementedError

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def load_image(self, index: int) -> np.ndarray:
        """Only the (H, W, 3) uint8 image of sample ``index``."""
        return self.load_arrays(index)[0]

    def load_mask(self, index: int) -> np.ndarray:
        """Only the label array of sample ``index`` (file formats skip decoding the image)."""
        return self.load_arrays(index)[1]

    def mask_name(self, index: int) -> str:
        """The mask's file (or id), for messages about the mask."""
        return self.sample_name(index)

    def load_extra(self, index: int, name: str) -> np.ndarray:
        """The (H, W) labels of extra target ``name`` for sample ``index`` (``ignore_index`` = void)."""
        raise FcnsegError(f"{self!r} has no {name} labels")

    def extra_name(self, index: int, name: str) -> str:
        """The file (or id) of extra target ``name`` of sample ``index``, for messages."""
        return self.mask_name(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        image, mask = self.load_arrays(index)
        if image.shape[:2] != mask.shape:
            raise FcnsegError(
                f"{self.sample_name(index)}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                f"{image.shape[1]}x{image.shape[0]}; fix or remove this sample (`fcnseg data check` lists all)"
            )
        labels = bad_labels(mask, self.num_classes, self.ignore_index)
        if labels:  # checked on first touch, so a bad mask never reaches the loss or the metrics
            raise FcnsegError(
                f"{self.mask_name(index)}: {bad_labels_message(labels, self.num_classes, self.ignore_index)}; "
                "fix or remove this mask (`fcnseg data check` lists all)"
            )
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return image_t, torch.from_numpy(mask.astype(np.int64))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.identity or self.split!r}, {len(self)} samples, {self.num_classes} classes)"
        )

    def with_modality(self, modality: str) -> SegmentationDataset:
        """This dataset giving ``modality`` input (itself when it already does); FcnsegError, one
        line, when it cannot (a colour-only dataset asked for depth)."""
        check_modality(modality)
        if modality == self.modality:
            return self
        if modality not in self.modalities:
            raise FcnsegError(
                f"{self!r} has {' or '.join(self.modalities)} input only, the model takes {modality}; "
                "evaluate it on data with depth (nyud:PATH) or use a model for colour images"
            )
        return self._as_modality(modality)

    def _as_modality(self, modality: str) -> SegmentationDataset:
        raise NotImplementedError


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise FcnsegError(f"unknown input modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    return modality


class WithTargets(Dataset):
    """``dataset`` with its extra targets ``names``: item ``i`` is (image uint8 (3, H, W), masks int64
    (1 + K, H, W)), the dataset's mask first, then each extra target in the order of ``names``; every
    label checked as the mask is. Transforms and collation treat the stack as one mask. Other
    attributes (``class_names``, ``sample_name``, ...) are the dataset's own."""

    def __init__(self, dataset: SegmentationDataset, names: Sequence[str]):
        known = {t.name: t for t in dataset.extra_targets}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FcnsegError(f"{dataset!r} has no {unknown[0]} labels; it has: {', '.join(known) or 'none'}")
        self.dataset = dataset
        self.targets = tuple(known[n] for n in names)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        index = index % len(self.dataset)
        masks = [mask]
        for target in self.targets:
            labels = self.dataset.load_extra(index, target.name)
            where = self.dataset.extra_name(index, target.name)
            if labels.shape != tuple(mask.shape):
                raise FcnsegError(
                    f"{where}: {target.name} labels are {labels.shape[1]}x{labels.shape[0]} but the image is "
                    f"{mask.shape[1]}x{mask.shape[0]}; fix or remove this sample"
                )
            bad = bad_labels(labels, target.num_classes, self.dataset.ignore_index)
            if bad:
                raise FcnsegError(
                    f"{where}: {target.name} {bad_labels_message(bad, target.num_classes, self.dataset.ignore_index)}; "
                    "fix or remove this file"
                )
            masks.append(torch.from_numpy(labels.astype(np.int64)))
        return image, torch.stack(masks)

    def __repr__(self) -> str:
        return f"{self.dataset!r} with {', '.join(t.name for t in self.targets)} labels"


# name -> "module:function"; the function takes (argument after the colon, split) -> dataset.
_FORMATS: dict[str, str] = {
    "shapes": "fcnseg.data.shapes:open_shapes",
    "voc": "fcnseg.data.voc:open_voc",
    "sbd": "fcnseg.data.voc:open_sbd",
    "voc-aug": "fcnseg.data.voc:open_voc_aug",
    "cityscapes": "fcnseg.data.cityscapes:open_cityscapes",
    "folder": "fcnseg.data.folder:open_folder",
    "pascal-context": "fcnseg.data.context:open_context",
    "siftflow": "fcnseg.data.siftflow:open_siftflow",
    "nyud": "fcnseg.data.nyud:open_nyud",
    "instances": "fcnseg.data.instances:open_instances",
}


SPEC_FORMS = (
    "shapes",
    "voc:PATH",
    "sbd:PATH",
    "voc-aug:VOC_PATH,SBD_PATH",
    "cityscapes:PATH",
    "folder:PATH",
    "pascal-context:PATH",
    "siftflow:PATH",
    "nyud:PATH",
    "instances:PATH",
)


def list_formats() -> list[str]:
    """The forms of dataset spec `load_dataset` understands."""
    return list(SPEC_FORMS)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"voc:/data/VOC2012"`` -> ``("voc", "/data/VOC2012")``; ``"shapes"`` -> ``("shapes", "")``."""
    name, _, arg = str(spec).partition(":")
    name = name.strip().lower()
    if name not in _FORMATS:
        raise FcnsegError(
            f"unknown dataset {spec!r}{did_you_mean(name, _FORMATS)}; use one of: {', '.join(SPEC_FORMS)}"
        )
    if name != "shapes" and not arg:
        raise FcnsegError(f"dataset {spec!r} needs a path: write it as {name}:PATH")
    return name, arg


def load_dataset(
    spec: str, split: str = "train", *, check_files: bool = True, modality: str = "rgb"
) -> SegmentationDataset:
    """Open the dataset named by ``spec`` (see the module docstring) for ``split``.

    With ``check_files`` (the default) a file-based dataset fails at once, naming the first missing
    or unpaired file; ``fcnseg data check`` opens with ``check_files=False`` to list every problem.
    ``modality`` (see ``MODALITIES``) is the input the images give: "rgb", or "hha"/"rgb-hha" from
    a dataset with depth.
    """
    check_modality(modality)
    name, arg = parse_spec(spec)
    module_name, func_name = _FORMATS[name].split(":")
    opener: Callable[..., SegmentationDataset] = getattr(importlib.import_module(module_name), func_name)
    return opener(arg, split, check_files=check_files).with_modality(modality)


def check_split(split: str, choices: Sequence[str], what: str) -> str:
    """Raise a helpful FcnsegError when ``split`` is not one of ``choices``."""
    if split not in choices:
        raise FcnsegError(f"{what} has no split {split!r}; choose one of {', '.join(choices)}")
    return split


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or FcnsegError if it is not an existing directory."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise FcnsegError(f"{what}: {p} is a file, not a folder; give the dataset's folder in the dataset spec")
    if not p.is_dir():
        raise FcnsegError(f"{what}: directory {p} does not exist; check the path in the dataset spec")
    return p
