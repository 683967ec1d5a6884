"""PASCAL VOC 2012, the Semantic Boundaries Dataset (SBD), and their union used by the FCN paper.

``voc:PATH`` -- PATH is VOCdevkit/VOC2012 (or a folder holding VOCdevkit/VOC2012 or VOC2012):
    JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt
    (splits train 1464, val 1449, trainval 2913 images). Masks are palette PNGs whose pixel values
    are the class ids (255 = void, the object outlines). Masks saved as RGB colour images are decoded
    through the VOC colour map; a colour that is not in the map is an error naming the file (rather
    than silently becoming void).

``sbd:PATH`` -- PATH is benchmark_RELEASE/dataset (or a folder holding it): img/<id>.jpg,
    cls/<id>.mat (struct GTcls, field Segmentation), train.txt (8498), val.txt (2820). SBD has no void
    label: its masks hold only 0..20.

``voc-aug:VOC_PATH,SBD_PATH`` -- splits:
    * ``train_aug``: SBD train + SBD val + VOC train, minus VOC val (10582 images with the full
      data). Where an image has a VOC mask it is used (finer, with void outlines), else SBD's.
    * ``seg11valid``: the FCN paper's validation set, the 736 images of VOC2011 val that are not in
      SBD train. VOC2011's val list (1111 images) is not part of VOC2012 and cannot be derived from
      it -- VOC2012 added images from the same 2007-2011 id range to both of its splits -- so the
      list is shipped as package data (fcnseg/data/splits/seg11valid.txt, the image ids published
      with the FCN authors' code as data/pascal/seg11valid.txt). Images and masks are read from the
      VOC2012 folders, which hold every VOC2011 segmentation image (VOC2012's segmentation ids all
      lie in 2007_000032..2011_003271); a missing one is reported by name.
    * ``val``: VOC2012 val (1449), and ``train``: VOC2012 train, for convenience.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from fcnseg.data.base import check_split, require_dir
from fcnseg.data.io import PairedFileDataset, decode_colors, read_id_list, read_mask_image, read_sbd_mat
from fcnseg.errors import FcnsegError
from fcnseg.palette import voc_colormap  # noqa: F401 (re-exported: fcnseg.data.voc.voc_colormap)

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOID_INDEX = 255

PALETTE = tuple(tuple(int(v) for v in c) for c in voc_colormap(len(CLASS_NAMES)))
VOID_COLOR = tuple(int(v) for v in voc_colormap()[VOID_INDEX])  # (224, 224, 192)


def read_voc_mask(path: Path) -> np.ndarray:
    """A VOC mask as class ids: palette PNGs directly, RGB masks through the VOC colour map."""
    mask, is_color = read_mask_image(path)
    if not is_color:
        return mask
    labels = list(range(len(CLASS_NAMES))) + [VOID_INDEX]
    return decode_colors(mask, list(PALETTE) + [VOID_COLOR], labels, path)


def read_voc_or_sbd_mask(path: Path) -> np.ndarray:
    return read_sbd_mat(path) if path.suffix == ".mat" else read_voc_mask(path)


def find_root(path: str, marker: str, candidates: tuple[str, ...], what: str, hint: str) -> Path:
    """The first of PATH/<candidate> holding ``marker``."""
    base = require_dir(path, what)
    for sub in candidates:
        if (base / sub / marker).exists():
            return (base / sub).resolve()
    raise FcnsegError(
        f"{base}: no {marker} found in it (looked in {', '.join(str(base / c) for c in candidates)}); {hint}"
    )


def voc_root(path: str) -> Path:
    return find_root(
        path,
        "ImageSets/Segmentation",
        (".", "VOC2012", "VOCdevkit/VOC2012"),
        "PASCAL VOC",
        "give the VOC2012 folder, or run `fcnseg data download voc2012 --root DIR`",
    )


def sbd_root(path: str) -> Path:
    return find_root(
        path,
        "cls",
        (".", "dataset", "benchmark_RELEASE/dataset"),
        "SBD",
        "give SBD's benchmark_RELEASE/dataset folder, or run `fcnseg data download sbd --root DIR`",
    )


def voc_split_ids(root: Path, split: str) -> list[str]:
    lists = root / "ImageSets" / "Segmentation"
    choices = sorted(p.stem for p in lists.glob("*.txt"))
    check_split(split, choices, f"PASCAL VOC at {root}")
    return read_id_list(lists / f"{split}.txt", "")


def sbd_split_ids(root: Path, split: str) -> list[str]:
    check_split(split, ("train", "val"), f"SBD at {root}")
    return read_id_list(root / f"{split}.txt", "SBD ships train.txt and val.txt next to cls/")


def _voc_pair(root: Path, image_id: str) -> tuple[Path, Path]:
    return root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"


def _sbd_pair(root: Path, image_id: str) -> tuple[Path, Path]:
    return root / "img" / f"{image_id}.jpg", root / "cls" / f"{image_id}.mat"


def _dataset(samples, reader, split: str, identity: str, check_files: bool) -> PairedFileDataset:
    return PairedFileDataset(
        samples,
        reader,
        class_names=CLASS_NAMES,
        palette=PALETTE,
        split=split,
        identity=identity,
        check_files=check_files,
    )


def open_voc(path: str, split: str, check_files: bool = True) -> PairedFileDataset:
    root = voc_root(path)
    samples = [_voc_pair(root, i) for i in voc_split_ids(root, split)]
    return _dataset(samples, read_voc_mask, split, f"voc:{root}/{split}", check_files)


def open_sbd(path: str, split: str, check_files: bool = True) -> PairedFileDataset:
    root = sbd_root(path)
    samples = [_sbd_pair(root, i) for i in sbd_split_ids(root, split)]
    return _dataset(samples, read_sbd_mat, split, f"sbd:{root}/{split}", check_files)


def seg11valid_ids() -> list[str]:
    """The 736 image ids of the FCN paper's VOC2011 validation subset (shipped package data)."""
    text = resources.files("fcnseg.data").joinpath("splits/seg11valid.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


VOC_AUG_SPLITS = ("train_aug", "seg11valid", "train", "val")


def open_voc_aug(paths: str, split: str, check_files: bool = True) -> PairedFileDataset:
    voc_path, _, sbd_path = paths.partition(",")
    if not sbd_path:
        raise FcnsegError(f"voc-aug:{paths}: give both folders, as voc-aug:VOC_PATH,SBD_PATH")
    check_split(split, VOC_AUG_SPLITS, "voc-aug")
    voc, sbd = voc_root(voc_path), sbd_root(sbd_path)
    if split == "train_aug":
        voc_val = set(voc_split_ids(voc, "val"))
        voc_train = voc_split_ids(voc, "train")
        sbd_ids = sbd_split_ids(sbd, "train") + sbd_split_ids(sbd, "val")
        with_voc_mask = set(voc_train)
        ids = sorted((set(voc_train) | set(sbd_ids)) - voc_val)
        samples = [_voc_pair(voc, i) if i in with_voc_mask else _sbd_pair(sbd, i) for i in ids]
    elif split == "seg11valid":
        samples = [_voc_pair(voc, i) for i in seg11valid_ids()]
    else:
        samples = [_voc_pair(voc, i) for i in voc_split_ids(voc, split)]
    return _dataset(samples, read_voc_or_sbd_mask, split, f"voc-aug:{voc},{sbd}/{split}", check_files)
