"""SIFT Flow (Liu, Yuen & Torralba; the FCN paper's Section 5, Table 5): 2,688 outdoor 256x256 images
labelled twice, with 33 semantic classes and 3 geometric classes (sky, horizontal, vertical).

``siftflow:PATH`` -- PATH is the extracted SiftFlowDataset.zip (or a folder holding it as
SiftFlowDataset/), with, under the sub-folder ``spatial_envelope_256x256_static_8outdoorcategories``:

    Images/<id>.jpg            the images
    SemanticLabels/<id>.mat    variable S: 0 = unlabelled, 1..33 = the classes
    GeoLabels/<id>.mat         variable S: -1 or 0 = unlabelled, 1..3 = sky, horizontal, vertical

Labels are shifted down by one as the reference's data layer does (siftflow_layers.py), so class ids
start at 0 and unlabelled pixels become 255 (ignored). Splits are the FCN reference's lists
(data/sift-flow/trainval.txt and test.txt, shipped as package data): ``trainval`` (2,486 images) and
``test`` (200); the two images without annotations (highway_bost181, street_urb506) are in neither.
``train`` and ``val`` name the same two lists, so the commands' default splits work unchanged. A
``trainval.txt`` / ``test.txt`` in PATH itself (the reference's data/sift-flow folder holds both
beside the data) is used instead of the shipped one.

Mean IU is averaged over the classes present in the split's labels (``score_present_classes``): three
classes (cow, desert, moon) are absent from the test set, and the paper "only included categories
actually present in the test set" in its evaluation.

The item is ``(image, semantic mask)`` as for every format; the geometric labels are the extra
target ``geometric`` (``load_extra``), read by two-headed models only (see ``data.base.WithTargets``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from fcnseg.data.base import IGNORE_INDEX, ExtraTarget, check_split, require_dir
from fcnseg.data.io import PairedFileDataset, read_id_list, read_mat_array
from fcnseg.errors import FcnsegError
from fcnseg.palette import voc_colormap

CLASS_NAMES = (
    "awning",
    "balcony",
    "bird",
    "boat",
    "bridge",
    "building",
    "bus",
    "car",
    "cow",
    "crosswalk",
    "desert",
    "door",
    "fence",
    "field",
    "grass",
    "moon",
    "mountain",
    "person",
    "plant",
    "pole",
    "river",
    "road",
    "rock",
    "sand",
    "sea",
    "sidewalk",
    "sign",
    "sky",
    "staircase",
    "streetlight",
    "sun",
    "tree",
    "window",
)
GEOMETRIC = ExtraTarget("geometric", ("sky", "horizontal", "vertical"))
PALETTE = tuple(tuple(int(v) for v in c) for c in voc_colormap(len(CLASS_NAMES)))
SUBFOLDER = "spatial_envelope_256x256_static_8outdoorcategories"
# split name -> the reference's list (package data); train/val are the names the commands default to
SPLITS = {"trainval": "trainval", "test": "test", "train": "trainval", "val": "test"}
_HINT = "give the extracted SiftFlowDataset folder, or run `fcnseg data download siftflow --root DIR`"


_FOLDERS = {"semantic": "SemanticLabels", "geometric": "GeoLabels"}


def read_siftflow_labels(path: Path, what: str) -> np.ndarray:
    """A SIFT Flow label file's variable S as class ids: 1..K -> 0..K-1, 0 and -1 (unlabelled) -> 255;
    values above K stay out of range, so the label check names the file."""
    kind = f"SIFT Flow {what} label file"
    wrong = f"not a {kind} (no S); use the files in {_FOLDERS[what]}/"
    labels = read_mat_array(path, kind, "S", None, wrong, dtype=np.int64)
    return np.where(labels >= 1, np.minimum(labels - 1, 254), IGNORE_INDEX).astype(np.uint8)


def siftflow_root(path: str) -> Path:
    base = require_dir(path, "SIFT Flow")
    for sub in (".", "SiftFlowDataset"):
        if (base / sub / "Images" / SUBFOLDER).is_dir():
            return (base / sub).resolve()
    raise FcnsegError(f"{base}: no Images/{SUBFOLDER} in it or in {base / 'SiftFlowDataset'}; {_HINT}")


def split_ids(root: Path, split: str) -> list[str]:
    """The image ids of ``split``: ROOT/<list>.txt where present, else the reference's list shipped with fcnseg."""
    check_split(split, tuple(SPLITS), "SIFT Flow")
    own = root / f"{SPLITS[split]}.txt"
    if own.exists():
        return read_id_list(own, "")
    text = resources.files("fcnseg.data").joinpath(f"splits/siftflow_{SPLITS[split]}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class SiftFlowDataset(PairedFileDataset):
    """(image, semantic labels) pairs; the geometric labels are the extra target ``geometric``."""

    extra_targets = (GEOMETRIC,)
    score_present_classes = True  # cow, desert and moon are absent from the test set (the paper's rule)

    def __init__(self, root: Path, split: str, check_files: bool = True):
        self.root = root
        ids = split_ids(root, split)
        self.geometric_files = [root / _FOLDERS["geometric"] / SUBFOLDER / f"{i}.mat" for i in ids]
        samples = [
            (root / "Images" / SUBFOLDER / f"{i}.jpg", root / _FOLDERS["semantic"] / SUBFOLDER / f"{i}.mat")
            for i in ids
        ]
        super().__init__(
            samples,
            lambda p: read_siftflow_labels(p, "semantic"),
            class_names=CLASS_NAMES,
            palette=PALETTE,
            split=split,
            identity=f"siftflow:{root}/{split}",
            check_files=check_files,
        )

    def _check_files_exist(self) -> None:
        super()._check_files_exist()
        missing = [p for p in self.geometric_files if not p.exists()]
        if missing:
            raise FcnsegError(
                f"{missing[0]} does not exist ({len(missing)} geometric label files of {self.identity} "
                "missing); run `fcnseg data check` to list them all"
            )

    def load_extra(self, index: int, name: str) -> np.ndarray:
        if name != GEOMETRIC.name:
            return super().load_extra(index, name)
        return read_siftflow_labels(self.geometric_files[index], "geometric")

    def extra_name(self, index: int, name: str) -> str:
        return str(self.geometric_files[index]) if name == GEOMETRIC.name else super().extra_name(index, name)


def open_siftflow(path: str, split: str, check_files: bool = True) -> SiftFlowDataset:
    return SiftFlowDataset(siftflow_root(path), split, check_files)
