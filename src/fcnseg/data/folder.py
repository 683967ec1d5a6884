"""Your own data (``folder:PATH``): images and masks in two folders per split, paired by file stem.

    PATH/train/images/cat1.jpg   PATH/train/masks/cat1.png
    PATH/val/images/...          PATH/val/masks/...
    PATH/classes.json            (optional)

Masks are single-channel index PNGs (pixel value = class id, 255 = ignore), or RGB colour PNGs
when classes.json gives each class's colour. classes.json::

    {"classes": [{"name": "background", "color": [0, 0, 0]}, {"name": "cat", "color": [255, 0, 0]}],
     "ignore_color": [255, 255, 255]}

(``"classes"`` may also be the whole file; ``ignore_color`` is optional and maps to 255.)

A class may also give ``"value"``: the pixel value that stands for it in index masks, when that is
not its position in the list. Binary masks saved as 0/255 (one object class, the most common format
for one-class segmentation) need exactly that, because 255 otherwise means "ignore"::

    {"classes": [{"name": "background", "value": 0}, {"name": "foreground", "value": 255}]}

With values given, a pixel value no class lists is an error naming the file (255 stays "ignore"
unless a class claims it; ``"ignore_value": V`` makes V mean "ignore" too).

Without classes.json the number of classes is inferred from the largest label in all masks, the
classes are named class_0, class_1, ..., and a warning says so. Two cases stop with the fix instead:
masks holding only 0 and 255 (binary masks: without a mapping they would make a 1-class model), and
RGB colour masks (the message prints the classes.json to write, with the colours found).
``fcnseg data check folder:PATH --write-classes`` writes that suggested classes.json for you.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnseg.data.base import IGNORE_INDEX, check_split, require_dir
from fcnseg.data.io import (IMAGE_EXTENSIONS, PairedFileDataset, color_codes, decode_colors, read_label_png,
                            read_mask_image)
from fcnseg.data.voc import voc_colormap
from fcnseg.errors import FcnsegError
from fcnseg.files import write_text

log = logging.getLogger(__name__)

MAX_SUGGESTED_COLORS = 64  # more distinct colours than this: the masks are smoothed or JPEG, not label maps


def read_folder_mask(path: Path, colors: Sequence[Sequence[int]] | None = None, labels: Sequence[int] = (),
                     values: np.ndarray | None = None) -> np.ndarray:
    """Index masks as they are (or through the classes.json values); colour masks through its colours."""
    if colors is None:
        mask = read_label_png(path)
    else:
        mask, is_color = read_mask_image(path)
        if is_color:
            return decode_colors(mask, colors, labels, path)
    return mask if values is None else map_values(mask, values, path)


def value_table(values: Sequence[int], ignore_value: int | None = None) -> np.ndarray:
    """A 256-entry lookup: pixel value -> class id, 255 for "ignore", -1 for a value no class lists."""
    lut = np.full(256, -1, dtype=np.int16)
    if IGNORE_INDEX not in values:
        lut[IGNORE_INDEX] = IGNORE_INDEX
    if ignore_value is not None:
        lut[ignore_value] = IGNORE_INDEX
    for k, v in enumerate(values):
        lut[v] = k
    return lut


def map_values(mask: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    out = lut[mask]
    if (out < 0).any():
        bad = sorted(int(v) for v in np.unique(mask[out < 0]))
        shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        raise FcnsegError(f"{path}: pixel values {shown} are no class \"value\" in classes.json "
                          f"({int((out < 0).sum())} pixels); list them there, or save the masks without smoothing")
    return out.astype(np.uint8)


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


@dataclass
class ClassTable:
    """What classes.json says: class names, and how masks encode them."""

    names: list[str]
    colors: list[tuple[int, int, int]] | None = None   # one per class, for RGB masks
    ignore_color: tuple[int, int, int] | None = None
    values: list[int] | None = None                    # one per class, for index masks
    ignore_value: int | None = None


def read_classes_json(path: Path) -> ClassTable:
    """The class table of a classes.json file (format: see the module docstring)."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FcnsegError(f"{path}: cannot read classes.json ({exc}); see `fcnseg.data.folder` for its format") from None
    entries = spec.get("classes") if isinstance(spec, dict) else spec
    if not isinstance(entries, list) or not entries:
        raise FcnsegError(f"{path}: expected a list of classes like [{{\"name\": \"background\", \"color\": [0, 0, 0]}}, ...]")
    names, colors, values = [], [], []
    for k, entry in enumerate(entries):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "name" not in entry:
            raise FcnsegError(f"{path}: class {k} has no \"name\"; write it as {{\"name\": ..., \"color\": [r, g, b]}}")
        names.append(str(entry["name"]))
        colors.append(_color(entry.get("color"), path, f"class {names[-1]!r}"))
        values.append(_value(entry.get("value"), path, f"class {names[-1]!r}"))
    table = ClassTable(names)
    if all(c is not None for c in colors):
        table.colors = colors
    if any(v is not None for v in values):
        if any(v is None for v in values) or len(set(values)) != len(values):
            raise FcnsegError(f"{path}: give every class a different \"value\" (its pixel value in the masks), or none")
        table.values = values
    if isinstance(spec, dict):
        table.ignore_color = _color(spec.get("ignore_color"), path, "ignore_color")
        table.ignore_value = _value(spec.get("ignore_value"), path, "ignore_value")
    return table


def _color(value, path: Path, what: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)):
        raise FcnsegError(f"{path}: {what} colour must be [r, g, b] with integers 0..255 (got {value!r})")
    return tuple(value)


def _value(value, path: Path, what: str) -> int | None:
    if value is None:
        return None
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255):
        raise FcnsegError(f"{path}: {what} value must be an integer 0..255, the pixel value in the masks (got {value!r})")
    return value


# ---------------------------------------------------------------------------------------------
# masks without classes.json: what they hold, and the classes.json they need


@dataclass
class MaskScan:
    """What a set of masks holds: index labels, RGB colours (code -> pixels), and one RGB mask to name."""

    labels: set[int] = field(default_factory=set)
    colors: Counter = field(default_factory=Counter)
    color_example: Path | None = None

    @property
    def binary_0_255(self) -> bool:
        """Only 0 and 255: binary masks saved as 0/255, which would otherwise be one class plus "ignore"."""
        return not self.colors and IGNORE_INDEX in self.labels and self.labels <= {0, IGNORE_INDEX}


def scan_masks(mask_paths: Sequence[Path]) -> MaskScan:
    """Read every mask that can be read (the others are reported by `fcnseg data check` and the loader)."""
    scan = MaskScan()
    for path in mask_paths:
        try:
            mask, is_color = read_mask_image(path)
        except FcnsegError:
            continue
        if is_color:
            codes, counts = np.unique(color_codes(mask), return_counts=True)
            scan.colors.update(dict(zip(codes.tolist(), counts.tolist())))
            scan.color_example = scan.color_example or path
        else:
            scan.labels.update(np.unique(mask).tolist())
    return scan


def suggested_classes(scan: MaskScan) -> dict | None:
    """The classes.json that binary 0/255 or RGB masks need (None when the masks need none)."""
    if scan.colors:
        codes = sorted(scan.colors, key=lambda c: (c != 0, -scan.colors[c]))[:MAX_SUGGESTED_COLORS]
        colors = [[c >> 16, (c >> 8) & 255, c & 255] for c in codes]
        return {"classes": [{"name": "background" if c == [0, 0, 0] else f"class_{k}", "color": c}
                            for k, c in enumerate(colors)]}
    if scan.binary_0_255:
        return {"classes": [{"name": "background", "value": 0}, {"name": "foreground", "value": 255}]}
    return None


def _needs_classes_json(root: Path, scan: MaskScan) -> FcnsegError:
    suggestion = json.dumps(suggested_classes(scan))
    classes_file = root / "classes.json"
    write = f"or run `fcnseg data check folder:{root} --write-classes` to write it"
    if scan.colors:
        many = (f"; {len(scan.colors)} distinct colours is too many for label maps: save the masks as "
                "lossless PNGs without smoothing") if len(scan.colors) > MAX_SUGGESTED_COLORS else ""
        return FcnsegError(f"{root}: the masks are RGB colour images (e.g. {scan.color_example}) and there is no "
                           f"classes.json to say which colour is which class{many}; write {classes_file} with the "
                           f"{min(len(scan.colors), MAX_SUGGESTED_COLORS)} colours found (rename the classes): "
                           f"{suggestion}; {write}")
    return FcnsegError(f"{root}: the masks hold only the values 0 and 255: binary masks saved as 0/255, but 255 "
                       f"means \"ignore\", so this would train a 1-class model; write {classes_file} mapping 255 "
                       f"to the foreground class: {suggestion}; {write}")


def write_suggested_classes(path: str | Path) -> tuple[Path, dict] | None:
    """Write the classes.json that ``folder:path``'s masks need; None when they need none.

    Never replaces an existing classes.json."""
    root = require_dir(path, "folder dataset").resolve()
    target = root / "classes.json"
    if target.exists():
        raise FcnsegError(f"{target} already exists; edit it, or move it away to have a new one suggested")
    masks = [p for d in sorted(root.iterdir()) if (d / "masks").is_dir() for p in _files_by_stem(d / "masks").values()]
    spec = suggested_classes(scan_masks(masks))
    if spec is None:
        return None
    write_text(target, json.dumps(spec, indent=2) + "\n")
    return target, spec


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
        table = read_classes_json(classes_file)
        names, colors, labels = table.names, table.colors, list(range(len(table.names)))
        if colors is not None and table.ignore_color is not None:
            colors, labels = colors + [table.ignore_color], labels + [IGNORE_INDEX]
        values = value_table(table.values, table.ignore_value) if table.values is not None else None
        reader = partial(read_folder_mask, colors=colors, labels=labels, values=values)
        palette = colors[: len(names)] if colors is not None else voc_colormap(len(names))
    else:
        all_masks = [p for s in splits for p in _files_by_stem(root / s / "masks").values()]
        scan = scan_masks(all_masks)
        if scan.colors or scan.binary_0_255:
            raise _needs_classes_json(root, scan)
        num = 1 + max((v for v in scan.labels if v != IGNORE_INDEX), default=-1)
        if num == 0:
            raise FcnsegError(f"{root}: found no readable labels in the masks; add index PNG masks or a classes.json")
        log.warning("%s: no classes.json; found labels 0..%d in %d masks, so %d classes named class_0..class_%d; "
                    "write %s to name them", root, num - 1, len(all_masks), num, num - 1, classes_file)
        names, reader, palette = [f"class_{k}" for k in range(num)], read_folder_mask, voc_colormap(num)
    samples = [(p, masks[s]) for s, p in images.items() if s in masks]
    dataset = PairedFileDataset(samples, reader, class_names=names, palette=palette, split=split,
                                identity=f"folder:{root}/{split}", check_files=check_files)
    dataset.orphans = orphans
    return dataset
