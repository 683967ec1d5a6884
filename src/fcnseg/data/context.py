"""PASCAL-Context: the 59 most frequent classes plus background, as the FCN paper evaluates it.

``pascal-context:PATH`` -- PATH holds both parts the dataset comes in (the layout
``fcnseg data download pascal-context --root PATH`` leaves):

* the PASCAL VOC 2010 images: ``VOCdevkit/VOC2010`` (or ``VOC2010``) with ``JPEGImages/<id>.jpg``
  and the splits ``ImageSets/Main/train.txt`` (4998 images) and ``val.txt`` (5105);
* the PASCAL-Context annotations (its ``trainval.tar.gz``): ``labels.txt`` (the 459 labels,
  ``"<id>: <name>"`` per line) and ``trainval/<id>.mat``, one ``LabelMap`` of label ids per image,
  in ``PATH/pascal-context`` (where the download puts them), ``PATH/trainval`` (that archive
  extracted into a folder of its own name) or PATH itself.

``pascal-context:VOC_PATH,CONTEXT_PATH`` names the two folders separately.

The 59-class task (Mottaghi et al., CVPR 2014) as the FCN authors' data layer reads it
(``pascalcontext_layers.py``): class ``k`` (1..59) is the k-th name of ``59_labels.txt`` -- the
order of ``CLASS_NAMES`` below, the order the authors' PASCAL-Context models predict -- matched by
name in ``labels.txt``, where three of them are spelled differently (``diningtable`` is
``table``, ``bedcloth`` is ``bedclothes``, ``clothes`` is ``cloth``); every other label, and the
unlabelled 0, is background (0). There is no void label: every pixel counts in the metrics.
Splits: ``train`` and ``val`` as the reference trains and scores on them, and ``trainval``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from fcnseg.data.base import check_split
from fcnseg.data.io import PairedFileDataset, read_id_list, read_mat_array
from fcnseg.data.voc import CLASS_NAMES as VOC_CLASS_NAMES
from fcnseg.data.voc import find_root
from fcnseg.errors import FcnsegError
from fcnseg.files import read_error
from fcnseg.palette import voc_colormap

#: Background, the 20 VOC classes, then 39 more: the order of the dataset's 59_labels.txt (and of
#: the reference's data/pascal-context/classes-59.txt), the order the authors' models predict.
CLASS_NAMES = VOC_CLASS_NAMES + (
    "bag",
    "bed",
    "bench",
    "book",
    "building",
    "cabinet",
    "ceiling",
    "clothes",
    "computer",
    "cup",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "keyboard",
    "light",
    "mountain",
    "mouse",
    "curtain",
    "platform",
    "sign",
    "plate",
    "road",
    "rock",
    "shelves",
    "sidewalk",
    "sky",
    "snow",
    "bedcloth",
    "track",
    "tree",
    "truck",
    "wall",
    "water",
    "window",
    "wood",
)
PALETTE = tuple(tuple(int(v) for v in c) for c in voc_colormap(len(CLASS_NAMES)))

#: The names the 59-class list and labels.txt spell differently (59-class name -> labels.txt name).
LABELS_TXT_NAMES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
SPLITS = ("train", "val", "trainval")
DOWNLOAD_HINT = "or run `fcnseg data download pascal-context --root DIR`"


def _key(name: str) -> str:
    return name.replace(" ", "").lower()


def read_labels_txt(path: Path) -> dict[str, int]:
    """labels.txt as {name without spaces: label id}."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FcnsegError(
            f"{path}: not found; it comes with PASCAL-Context's trainval.tar.gz, {DOWNLOAD_HINT}"
        ) from None
    except OSError as exc:
        raise read_error(path, exc) from None
    labels = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        label, sep, name = line.partition(":")
        if not sep or not label.strip().isdigit():
            raise FcnsegError(
                f"{path}, line {number}: {line!r} is not '<id>: <name>'; is it PASCAL-Context's labels.txt?"
            )
        labels[_key(name)] = int(label)
    return labels


def label_lut(labels: dict[str, int], where: Path) -> np.ndarray:
    """The lookup table from PASCAL-Context label ids to the 60 classes (0 = background)."""
    lut = np.zeros(max(labels.values(), default=0) + 1, dtype=np.uint8)
    missing = []
    for index, name in enumerate(CLASS_NAMES[1:], 1):
        label = labels.get(_key(LABELS_TXT_NAMES.get(name, name)))
        if label is None:
            missing.append(name)
        else:
            lut[label] = index
    if missing:
        raise FcnsegError(
            f"{where}: no label {', '.join(missing)} of the 59-class task; is it PASCAL-Context's labels.txt?"
        )
    return lut


def read_context_mat(path: str | Path, lut: np.ndarray) -> np.ndarray:
    """A ``trainval/<id>.mat`` LabelMap as 60-class ids (uint8)."""
    label_map = read_mat_array(
        path,
        "PASCAL-Context mask",
        "LabelMap",
        None,
        "not a PASCAL-Context annotation (no LabelMap); use the files in its trainval/ folder",
    )
    if label_map.size and int(label_map.max()) >= len(lut):
        raise FcnsegError(
            f"{path}: label {int(label_map.max())} is not in labels.txt (ids up to {len(lut) - 1}); "
            "use the labels.txt that came with these annotations"
        )
    return lut[label_map]


def context_roots(arg: str) -> tuple[Path, Path]:
    """(the VOC2010 folder, the annotations folder) for the spec's argument."""
    voc_path, _, context_path = arg.partition(",")
    voc = find_root(
        voc_path,
        "JPEGImages",
        (".", "VOC2010", "VOCdevkit/VOC2010"),
        "PASCAL-Context",
        f"PASCAL-Context needs PASCAL VOC 2010's images: give the folder holding VOCdevkit/VOC2010, {DOWNLOAD_HINT}",
    )
    context = find_root(
        context_path or voc_path,
        "labels.txt",
        (".", "pascal-context", "trainval"),
        "PASCAL-Context",
        f"give the folder of PASCAL-Context's trainval.tar.gz (labels.txt and trainval/), {DOWNLOAD_HINT}",
    )
    return voc, context


def context_split_ids(voc: Path, split: str) -> list[str]:
    check_split(split, SPLITS, "PASCAL-Context")
    lists = voc / "ImageSets" / "Main"
    if split == "trainval" and not (lists / "trainval.txt").exists():
        return context_split_ids(voc, "train") + context_split_ids(voc, "val")
    return read_id_list(lists / f"{split}.txt", "PASCAL-Context's splits are VOC2010's ImageSets/Main lists")


def open_context(arg: str, split: str, check_files: bool = True) -> PairedFileDataset:
    voc, context = context_roots(arg)
    lut = label_lut(read_labels_txt(context / "labels.txt"), context / "labels.txt")
    samples = [
        (voc / "JPEGImages" / f"{i}.jpg", context / "trainval" / f"{i}.mat") for i in context_split_ids(voc, split)
    ]
    return PairedFileDataset(
        samples,
        functools.partial(read_context_mat, lut=lut),
        class_names=CLASS_NAMES,
        palette=PALETTE,
        split=split,
        identity=f"pascal-context:{voc},{context}/{split}",
        check_files=check_files,
    )
