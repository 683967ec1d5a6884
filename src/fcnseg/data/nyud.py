"""NYUDv2 (NYU Depth V2) in the FCN authors' layout, with the 40 classes of Gupta et al. (CVPR 2013).

``nyud:PATH`` -- PATH is the folder the reference's nyud_layers.py reads (data/nyud of
fcn.berkeleyvision.org, the contents of http://dl.caffe.berkeleyvision.org/nyud.tar.gz):

    train.txt, val.txt, test.txt      image ids, one per line (e.g. 5003); optional: the reference's
                                      lists ship with fcnseg (data/splits/nyud_*.txt) and are used
                                      where the folder has none
    data/images/img_<id>.png          colour image
    data/depth/img_<id>.png           depth, 16-bit PNG in millimetres
    data/hha/img_<id>.png             HHA (optional: computed from depth when the folder is absent)
    segmentation/img_<id>.mat         variable ``segmentation``: 0 void, 1..40 the classes

Splits: ``train`` (381) and ``val`` (414) as the reference's files list them, ``trainval`` (their
union, the standard 795 training images; trainval.txt when present) and ``test`` (the standard 654).
Labels are shifted as nyud_layers.py does: class k is k - 1, void (0) is 255.

Input modality (``fcnseg.data.base.MODALITIES``): ``rgb`` (default), ``hha``, or ``rgb-hha``
(6 channels: RGB then HHA, the late-fusion models' input). HHA comes from data/hha/ when the folder
has it (the images the authors trained on), else from the depth with ``fcnseg.data.hha`` (cached).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from fcnseg.data.base import check_split, require_dir
from fcnseg.data.hha import cached_hha
from fcnseg.data.io import PairedFileDataset, read_id_list, read_mat_array
from fcnseg.errors import FcnsegError
from fcnseg.images import read_rgb
from fcnseg.palette import voc_colormap

# The reference's data/nyud/classes.txt, in model output order.
CLASS_NAMES = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refridgerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
)
SPLITS = ("train", "val", "trainval", "test")
# The input means of the reference's data layer (nyud_layers.py: mean_bgr, mean_hha), as normalisation
# modes (fcnseg.data.normalize): colour as BGR minus its mean, HHA minus its mean in its own order.
COLOR_NORMALIZATION = "caffe:116.190,97.203,92.318"
HHA_NORMALIZATION = "raw:132.431,94.076,118.477"
RGB_HHA_NORMALIZATION = f"{COLOR_NORMALIZATION}+{HHA_NORMALIZATION}"
DEPTH_SCALE = 1000.0  # depth PNG values per metre (millimetres)
_WRONG_MAT = "not an NYUDv2 label file (no variable 'segmentation'); use the files in the segmentation/ folder"


def read_nyud_mat(path: str | os.PathLike) -> np.ndarray:
    """Class ids of a ``segmentation/img_<id>.mat`` file: 1..40 -> 0..39, void 0 -> 255."""
    labels = read_mat_array(path, "NYUDv2 label", "segmentation", None, _WRONG_MAT)
    return (labels.astype(np.int64) - 1).astype(np.uint8)  # 0 - 1 wraps to 255: void, as the reference


def nyud_split_ids(root: Path, split: str) -> list[str]:
    """The folder's ``<split>.txt``, else the reference's list shipped with fcnseg; ``trainval``
    without a trainval.txt is train + val."""
    check_split(split, SPLITS, "nyud")
    if split == "trainval" and not (root / "trainval.txt").exists():
        return nyud_split_ids(root, "train") + nyud_split_ids(root, "val")
    if (root / f"{split}.txt").exists():
        return read_id_list(root / f"{split}.txt", "give a list of image ids, one per line")
    text = resources.files("fcnseg.data").joinpath(f"splits/nyud_{split}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class NYUDDataset(PairedFileDataset):
    """NYUDv2 samples; the image is RGB, HHA or both (see the module docstring)."""

    modalities = ("rgb", "hha", "rgb-hha")

    def __init__(self, root: Path, ids: list[str], split: str, *, modality: str = "rgb", check_files: bool = True):
        self.root = root
        self.ids = list(ids)
        self.modality = modality
        self.hha_dir = root / "data" / "hha"
        self.precomputed_hha = self.hha_dir.is_dir()
        samples = [(self.image_path(i), root / "segmentation" / f"img_{i}.mat") for i in self.ids]
        suffix = "" if modality == "rgb" else f" ({modality})"
        super().__init__(
            samples,
            read_nyud_mat,
            class_names=CLASS_NAMES,
            palette=voc_colormap(len(CLASS_NAMES)),
            split=split,
            identity=f"nyud:{root}/{split}{suffix}",
            check_files=check_files,
        )

    def image_path(self, image_id: str) -> Path:
        return self.root / "data" / "images" / f"img_{image_id}.png"

    def hha_source(self, index: int) -> Path:
        """The HHA image where the folder has them, else the depth map it is computed from."""
        name = f"img_{self.ids[index]}.png"
        return self.hha_dir / name if self.precomputed_hha else self.root / "data" / "depth" / name

    def _check_files_exist(self) -> None:
        super()._check_files_exist()
        if self.modality == "rgb":
            return
        missing = [p for p in map(self.hha_source, range(len(self))) if not p.exists()]
        if missing:
            what = "HHA images (data/hha/)" if self.precomputed_hha else "depth maps (data/depth/)"
            raise FcnsegError(
                f"{missing[0]} does not exist ({len(missing)} of {len(self)} {what} of {self.identity} "
                f"missing); {self.modality} input needs one per image"
            )

    def load_hha(self, index: int) -> np.ndarray:
        source = self.hha_source(index)
        if self.precomputed_hha:
            return read_rgb(source, what="HHA image")
        return cached_hha(source, depth_scale=DEPTH_SCALE)

    def load_image(self, index: int) -> np.ndarray:
        if self.modality == "hha":
            return self.load_hha(index)
        rgb = read_rgb(self.samples[index][0])
        if self.modality == "rgb":
            return rgb
        hha = self.load_hha(index)
        if hha.shape[:2] != rgb.shape[:2]:
            raise FcnsegError(
                f"{self.hha_source(index)}: {hha.shape[1]}x{hha.shape[0]}, but the image is "
                f"{rgb.shape[1]}x{rgb.shape[0]}; depth and colour must be registered pixel for pixel"
            )
        return np.concatenate((rgb, hha), axis=-1)

    def _as_modality(self, modality: str) -> NYUDDataset:
        return NYUDDataset(self.root, self.ids, self.split, modality=modality)


def nyud_root(path: str) -> Path:
    """The folder holding segmentation/: PATH itself, or up to two levels of nyud/ below it (where
    `fcnseg data download nyud` extracted the archive, with or without its own top folder)."""
    root = require_dir(path, "nyud")
    for candidate in (root, root / "nyud", root / "nyud" / "nyud"):
        if (candidate / "segmentation").is_dir():
            return candidate
    raise FcnsegError(
        f"nyud: {root} has no segmentation/ folder; give the NYUDv2 folder of the FCN authors' layout "
        "(data/images, segmentation/*.mat), e.g. what `fcnseg data download nyud --root DIR` made"
    )


def open_nyud(path: str, split: str, check_files: bool = True) -> NYUDDataset:
    root = nyud_root(path)
    return NYUDDataset(root, nyud_split_ids(root, split), split, check_files=check_files)
