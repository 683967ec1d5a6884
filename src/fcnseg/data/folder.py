"""Your own data (``folder:PATH``): images and masks in two folders per split, paired by file stem.

    PATH/train/images/cat1.jpg   PATH/train/masks/cat1.png
    PATH/val/images/...          PATH/val/masks/...
    PATH/classes.json            (optional)

Masks are single-channel index PNGs (pixel value = class id, 255 = ignore), or RGB colour PNGs
when classes.json gives each class's colour. classes.json::

    {"classes": [{"name": "background", "color": [0, 0, 0]}, {"name": "cat", "color": [255, 0, 0]}],
     "ignore_color": [255, 255, 255]}

(``"classes"`` may also be the whole file; ``ignore_color`` is optional and maps to 255.) Without
classes.json the number of classes is inferred from the largest label in all masks, the classes
are named class_0, class_1, ..., and a warning says so.
"""

from __future__ import annotations

import json
import warnings
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnseg.data.base import IGNORE_INDEX, check_split, require_dir
from fcnseg.data.io import IMAGE_EXTENSIONS, PairedFileDataset, decode_colors, read_label_png, read_mask_image
from fcnseg.data.voc import voc_colormap
from fcnseg.errors import FcnsegError


def read_folder_mask(path: Path, colors: Sequence[Sequence[int]] | None = None, labels: Sequence[int] = ()) -> np.ndarray:
    """Index masks as they are; colour masks through the classes.json colours."""
    if colors is None:
        return read_label_png(path)
    mask, is_color = read_mask_image(path)
    return decode_colors(mask, colors, labels, path) if is_color else mask


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


def read_classes_json(path: Path) -> tuple[list[str], list[tuple[int, int, int]] | None, tuple[int, int, int] | None]:
    """(names, colours or None, ignore colour or None) from classes.json."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FcnsegError(f"{path}: cannot read classes.json ({exc}); see `fcnseg.data.folder` for its format") from None
    entries = spec.get("classes") if isinstance(spec, dict) else spec
    if not isinstance(entries, list) or not entries:
        raise FcnsegError(f"{path}: expected a list of classes like [{{\"name\": \"background\", \"color\": [0, 0, 0]}}, ...]")
    names, colors = [], []
    for k, entry in enumerate(entries):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "name" not in entry:
            raise FcnsegError(f"{path}: class {k} has no \"name\"; write it as {{\"name\": ..., \"color\": [r, g, b]}}")
        names.append(str(entry["name"]))
        colors.append(_color(entry.get("color"), path, f"class {names[-1]!r}"))
    if any(c is None for c in colors):
        colors = None
    ignore = _color(spec.get("ignore_color"), path, "ignore_color") if isinstance(spec, dict) else None
    return names, colors, ignore


def _color(value, path: Path, what: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)):
        raise FcnsegError(f"{path}: {what} colour must be [r, g, b] with integers 0..255 (got {value!r})")
    return tuple(value)


def infer_num_classes(mask_paths: Sequence[Path]) -> int:
    """1 + the largest label other than 255 over the masks that can be read (0 if none)."""
    largest = -1
    for path in mask_paths:
        try:
            labels = np.unique(read_label_png(path))
        except FcnsegError:
            continue  # reported by `fcnseg data check` and by the loader
        labels = labels[labels != IGNORE_INDEX]
        if labels.size:
            largest = max(largest, int(labels.max()))
    return largest + 1


def open_folder(path: str, split: str, check_files: bool = True) -> PairedFileDataset:
    root = require_dir(path, "folder dataset").resolve()
    splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    if not splits:
        raise FcnsegError(f"{root}: no <split>/images folder; lay the data out as {root}/train/images and {root}/train/masks")
    check_split(split, splits, f"folder dataset {root}")
    images = _files_by_stem(root / split / "images")
    masks = _files_by_stem(root / split / "masks")
    orphans = [(str(p), "image without mask") for s, p in images.items() if s not in masks]
    orphans += [(str(p), "mask without image") for s, p in masks.items() if s not in images]
    if check_files and any(problem == "image without mask" for _, problem in orphans):
        first = next(p for p, problem in orphans if problem == "image without mask")
        raise FcnsegError(f"{first} has no mask in {root / split / 'masks'} (masks pair with images by file stem); "
                          "run `fcnseg data check` to list all problems")
    classes_file = root / "classes.json"
    if classes_file.is_file():
        names, colors, ignore = read_classes_json(classes_file)
        labels = list(range(len(names)))
        if colors is not None and ignore is not None:
            colors, labels = colors + [ignore], labels + [IGNORE_INDEX]
        reader = partial(read_folder_mask, colors=colors, labels=labels)
        palette = colors[: len(names)] if colors is not None else voc_colormap(len(names))
    else:
        all_masks = [p for s in splits for p in _files_by_stem(root / s / "masks").values()]
        num = infer_num_classes(all_masks)
        if num == 0:
            raise FcnsegError(f"{root}: found no readable labels in the masks; add index PNG masks or a classes.json")
        warnings.warn(f"{root}: no classes.json; found labels 0..{num - 1} in {len(all_masks)} masks, so {num} classes "
                      f"named class_0..class_{num - 1}; write {classes_file} to name them", stacklevel=2)
        names, reader, palette = [f"class_{k}" for k in range(num)], read_folder_mask, voc_colormap(num)
    samples = [(p, masks[s]) for s, p in images.items() if s in masks]
    dataset = PairedFileDataset(samples, reader, class_names=names, palette=palette, split=split,
                                identity=f"folder:{root}/{split}", check_files=check_files)
    dataset.orphans = orphans
    return dataset
