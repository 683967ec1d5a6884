"""Cityscapes (``cityscapes:PATH``): the 19 evaluation classes of the fine annotations.

Layout under PATH: leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and
gtFine/<split>/<city>/<name>_gtFine_labelIds.png, splits train (2975), val (500), test (1525, whose
public labels are all void). The labelIds masks hold Cityscapes' 34 label ids; they are mapped to the
19 train ids below, every other id (unlabelled, ego vehicle, ..., caravan, trailer) to 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fcnseg.data.base import check_split, require_dir
from fcnseg.data.io import PairedFileDataset, ignore_lut, read_label_png
from fcnseg.errors import FcnsegError

# (name, label id in the *_labelIds.png files, colour); the train id is the position in this list.
CLASSES = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)
CLASS_NAMES = tuple(c[0] for c in CLASSES)
PALETTE = tuple(c[2] for c in CLASSES)
LABEL_TO_TRAIN_ID = ignore_lut({label_id: train_id for train_id, (_, label_id, _) in enumerate(CLASSES)})

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"


def read_cityscapes_mask(path: Path) -> np.ndarray:
    """A labelIds PNG as train ids (0..18, 255 elsewhere)."""
    return LABEL_TO_TRAIN_ID[read_label_png(path)]


def open_cityscapes(path: str, split: str, check_files: bool = True) -> PairedFileDataset:
    root = require_dir(path, "Cityscapes").resolve()
    check_split(split, ("train", "val", "test"), f"Cityscapes at {root}")
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise FcnsegError(
            f"{image_dir} does not exist; PATH must hold leftImg8bit/ and gtFine/ "
            "(from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip)"
        )
    samples = []
    for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        name = image.name[: -len(IMAGE_SUFFIX)]
        samples.append((image, root / "gtFine" / split / image.parent.name / f"{name}{MASK_SUFFIX}"))
    return PairedFileDataset(
        samples,
        read_cityscapes_mask,
        class_names=CLASS_NAMES,
        palette=PALETTE,
        split=split,
        identity=f"cityscapes:{root}/{split}",
        check_files=check_files,
    )
