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

When classes.json gives colours, palette ('P') masks are decoded by the colours they show, like RGB
masks (their indices are the labels only without colours). classes.json is checked in full when
read: at most 255 classes, no name, colour or value given twice, no unknown key.

With values given, a pixel value no class lists is an error naming the file (255 stays "ignore"
unless a class claims it; ``"ignore_value": V`` makes V mean "ignore" too).

Without classes.json the number of classes is inferred from the largest label in all masks, the
classes are named class_0, class_1, ..., and a warning says so. Two cases stop with the fix instead:
masks holding only 0 and 255 (binary masks: without a mapping they would make a 1-class model), and
RGB colour masks (the message prints the classes.json to write, with the colours found).
``fcnseg data check folder:PATH --write-classes`` writes that suggested classes.json for you.
"""

from __future__ import annotations

import difflib
import errno
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from fcnseg.data.base import IGNORE_INDEX, check_split, require_dir
from fcnseg.data.io import (
    IMAGE_EXTENSIONS,
    PairedFileDataset,
    color_codes,
    decode_colors,
    read_label_png,
    read_mask_image,
)
from fcnseg.errors import FcnsegError
from fcnseg.files import write_text
from fcnseg.palette import class_colours, voc_colormap

log = logging.getLogger(__name__)

MAX_SUGGESTED_COLORS = 64  # more distinct colours than this: the masks are smoothed or JPEG, not label maps


def read_folder_mask(
    path: Path,
    colors: Sequence[Sequence[int]] | None = None,
    labels: Sequence[int] = (),
    values: np.ndarray | None = None,
) -> np.ndarray:
    """Index masks as they are (or through the classes.json values); colour masks through its colours."""
    if colors is None:
        mask = read_label_png(path)
    else:  # classes given by colour: a palette mask is read by the colours it shows, like an RGB mask
        mask, is_color = read_mask_image(path, by_colour=True)
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
        raise FcnsegError(
            f'{path}: pixel values {shown} are no class "value" in classes.json '
            f"({int((out < 0).sum())} pixels); list them there, or save the masks without smoothing"
        )
    return out.astype(np.uint8)


@dataclass
class FolderScan:
    """Every entry of an images/ or masks/ folder: used (``files``, by stem) or reported.

    ``problems`` are entries meant as data that cannot be used (a broken link, a symlink loop, a
    FIFO/socket/device, an unreadable file, two files with one stem); ``skipped`` are entries that are
    not data files fcnseg reads (another suffix, a subfolder). Each is (path, reason)."""

    files: dict[str, Path] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _entry_problem(path: Path) -> tuple[str, str] | None:
    """(kind, reason) when the entry cannot be used as a file: "problem" or "skip"; None if usable.
    Only stat() is called: a FIFO is never opened (that would block)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "problem", "broken symlink (its target does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "problem", "symlink loop"
        return "problem", f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return "skip", "subfolder (folders are not searched below images/ and masks/)"
    if not stat.S_ISREG(info.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(info.st_mode) else "socket" if stat.S_ISSOCK(info.st_mode) else "device"
        return "problem", f"a {kind}, not a regular file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return "skip", f"not an image file fcnseg reads ({', '.join(IMAGE_EXTENSIONS)})"
    if not os.access(path, os.R_OK):
        return "problem", "cannot be read (permission denied)"
    return None


def scan_folder(folder: Path) -> FolderScan:
    """Sort every entry of ``folder`` into usable files by stem, problems and skipped entries."""
    scan = FolderScan()
    if not folder.is_dir():
        return scan
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        found = _entry_problem(path)
        if found is None:
            by_stem.setdefault(path.stem, []).append(path)
        elif found[0] == "skip":
            scan.skipped.append((str(path), found[1]))
        else:
            scan.problems.append((str(path), found[1]))
    for stem, paths in by_stem.items():
        if len(paths) == 1:
            scan.files[stem] = paths[0]
        else:
            names = " and ".join(p.name for p in paths)
            scan.problems += [
                (str(p), f"{names} share the name {stem!r}, so it is unclear which to pair; rename or remove one")
                for p in paths
            ]
    return scan


def _files_by_stem(folder: Path) -> dict[str, Path]:
    return scan_folder(folder).files


def report_entries(
    where: str, entries: Sequence[tuple[str, str]], level: int = logging.WARNING, shown: int = 3
) -> None:
    """One log line per class of problem (same reason): how many files, and the first few."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in entries:
        by_reason.setdefault(reason, []).append(Path(path).name)
    for reason, names in by_reason.items():
        more = f", ... {len(names) - shown} more" if len(names) > shown else ""
        log.log(level, "%s: %d file(s) not used: %s: %s%s", where, len(names), reason, ", ".join(names[:shown]), more)


@dataclass
class ClassTable:
    """What classes.json says: class names, and how masks encode them."""

    names: list[str]
    colors: list[tuple[int, int, int]] | None = None  # one per class, for RGB masks
    ignore_color: tuple[int, int, int] | None = None
    values: list[int] | None = None  # one per class, for index masks
    ignore_value: int | None = None


MAX_CLASSES = 255  # 8-bit masks hold 0..255 and 255 means "ignore"
_CLASS_KEYS = ("name", "color", "value")
_TOP_KEYS = ("classes", "ignore_color", "ignore_value")


def read_classes_json(path: Path) -> ClassTable:
    """The class table of a classes.json file (format: see the module docstring), validated in full:
    every mistake is one FcnsegError naming the file and the key (bad JSON, unknown keys, a missing
    name, more than 255 classes, colours or values out of range, given for some classes only, or
    given twice, names given twice, an ignore colour/value that is also a class's)."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FcnsegError(
            f"{path}: cannot read classes.json ({exc}); see `fcnseg.data.folder` for its format"
        ) from None
    if isinstance(spec, dict):
        _no_unknown_keys(spec, _TOP_KEYS, path, "the top level")
    entries = spec.get("classes") if isinstance(spec, dict) else spec
    if not isinstance(entries, list) or not entries:
        raise FcnsegError(
            f'{path}: "classes": expected a list of classes like [{{"name": "background", "color": [0, 0, 0]}}, ...]'
        )
    if len(entries) > MAX_CLASSES:
        raise FcnsegError(
            f'{path}: "classes" lists {len(entries)} classes, but 8-bit masks hold at most '
            f'{MAX_CLASSES} (255 means "ignore"); merge classes or split the dataset'
        )
    names, colors, values = [], [], []
    for k, entry in enumerate(entries):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise FcnsegError(f'{path}: classes[{k}] has no "name"; write it as {{"name": ..., "color": [r, g, b]}}')
        _no_unknown_keys(entry, _CLASS_KEYS, path, f"classes[{k}]")
        names.append(entry["name"])
        colors.append(_color(entry.get("color"), path, f'classes[{k}] ({names[-1]!r}) "color"'))
        values.append(_value(entry.get("value"), path, f'classes[{k}] ({names[-1]!r}) "value"'))
    _all_or_none(colors, path, "color", "its colour in RGB masks")
    _all_or_none(values, path, "value", "its pixel value in index masks")
    _no_repeats(names, names, path, "name")
    table = ClassTable(names)
    if colors[0] is not None:
        _no_repeats(colors, names, path, "color")
        table.colors = colors
    if values[0] is not None:
        _no_repeats(values, names, path, "value")
        table.values = values
    if isinstance(spec, dict):
        table.ignore_color = _color(spec.get("ignore_color"), path, '"ignore_color"')
        table.ignore_value = _value(spec.get("ignore_value"), path, '"ignore_value"')
        for key, given, listed in (
            ("ignore_color", table.ignore_color, table.colors),
            ("ignore_value", table.ignore_value, table.values),
        ):
            if given is not None and listed is not None and given in listed:
                raise FcnsegError(
                    f'{path}: "{key}" {list(given) if key == "ignore_color" else given} is also '
                    f"class {names[listed.index(given)]!r}'s; a pixel cannot be both, change one"
                )
    return table


def _no_unknown_keys(entry: dict, known: tuple[str, ...], path: Path, where: str) -> None:
    for key in entry:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            raise FcnsegError(f'{path}: {where} has the unknown key "{key}"; {hint}the keys are {", ".join(known)}')


def _all_or_none(given: list, path: Path, key: str, meaning: str) -> None:
    if any(v is None for v in given) and any(v is not None for v in given):
        k = next(k for k, v in enumerate(given) if v is None)
        raise FcnsegError(
            f'{path}: classes[{k}] has no "{key}" but other classes do; give every class a "{key}" ({meaning}), or none'
        )


def _no_repeats(items: list, names: list[str], path: Path, key: str) -> None:
    first: dict = {}
    for k, item in enumerate(items):
        marker = item.casefold() if isinstance(item, str) else item
        if marker in first:
            j = first[marker]
            shown = list(item) if isinstance(item, tuple) else item
            raise FcnsegError(
                f"{path}: classes[{j}] ({names[j]!r}) and classes[{k}] ({names[k]!r}) have the same "
                f'"{key}" {json.dumps(shown)}; give each class its own'
            )
        first[marker] = k


def _color(value, path: Path, what: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if not (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        raise FcnsegError(f"{path}: {what} must be [r, g, b] with integers 0..255 (got {value!r})")
    return tuple(value)


def _value(value, path: Path, what: str) -> int | None:
    if value is None:
        return None
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255):
        raise FcnsegError(f"{path}: {what} must be an integer 0..255, the pixel value in the masks (got {value!r})")
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


def voc_indices(scan: MaskScan) -> list[int] | None:
    """The PASCAL VOC colour-map indices of the colours found, when every one is a VOC colour (masks
    that are palette masks saved as RGB: their class order is known); None otherwise."""
    lookup = {int(code): k for k, code in enumerate(color_codes(voc_colormap(256)))}
    found = [lookup.get(int(code)) for code in scan.colors]
    return None if not found or None in found else sorted(found)


def suggested_classes(scan: MaskScan) -> dict | None:
    """The classes.json that binary 0/255 or RGB masks need (None when the masks need none). RGB masks
    whose colours all come from VOC's colour map get VOC's class order (index k = class k, 255 = ignore)."""
    voc = voc_indices(scan) if scan.colors else None
    if voc is not None:
        cmap, top = voc_colormap(256), max([k for k in voc if k != IGNORE_INDEX], default=0)
        spec = {
            "classes": [
                {"name": "background" if k == 0 else f"class_{k}", "color": cmap[k].tolist()} for k in range(top + 1)
            ]
        }
        if IGNORE_INDEX in voc:
            spec["ignore_color"] = cmap[IGNORE_INDEX].tolist()
        return spec
    if scan.colors:
        codes = sorted(scan.colors, key=lambda c: (c != 0, -scan.colors[c]))[:MAX_SUGGESTED_COLORS]
        colors = [[c >> 16, (c >> 8) & 255, c & 255] for c in codes]
        return {
            "classes": [
                {"name": "background" if c == [0, 0, 0] else f"class_{k}", "color": c} for k, c in enumerate(colors)
            ]
        }
    if scan.binary_0_255:
        return {"classes": [{"name": "background", "value": 0}, {"name": "foreground", "value": 255}]}
    return None


def _needs_classes_json(root: Path, scan: MaskScan) -> FcnsegError:
    suggestion = json.dumps(suggested_classes(scan))
    classes_file = root / "classes.json"
    write = f"or run `fcnseg data check folder:{root} --write-classes` to write it"
    if scan.colors:
        many = (
            (
                f"; {len(scan.colors)} distinct colours is too many for label maps: save the masks as "
                "lossless PNGs without smoothing"
            )
            if len(scan.colors) > MAX_SUGGESTED_COLORS
            else ""
        )
        if voc_indices(scan) is not None:
            return FcnsegError(
                f"{root}: the masks are palette masks saved as RGB (e.g. {scan.color_example}: every "
                "colour is from PASCAL VOC's colour map) and there is no classes.json; write "
                f"{classes_file} with the classes in VOC order (rename them): {suggestion}; {write}"
            )
        return FcnsegError(
            f"{root}: the masks are RGB colour images (e.g. {scan.color_example}) and there is no "
            f"classes.json to say which colour is which class{many}; write {classes_file} with the "
            f"{min(len(scan.colors), MAX_SUGGESTED_COLORS)} colours found (rename the classes): "
            f"{suggestion}; {write}"
        )
    return FcnsegError(
        f"{root}: the masks hold only the values 0 and 255: binary masks saved as 0/255, but 255 "
        f'means "ignore", so this would train a 1-class model; write {classes_file} mapping 255 '
        f"to the foreground class: {suggestion}; {write}"
    )


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
        raise FcnsegError(
            f"{root}: no <split>/images folder; lay the data out as {root}/train/images and {root}/train/masks"
        )
    check_split(split, splits, f"folder dataset {root}")
    image_scan, mask_scan = scan_folder(root / split / "images"), scan_folder(root / split / "masks")
    images, masks = image_scan.files, mask_scan.files
    unusable_masks = {Path(path).stem for path, _ in mask_scan.problems}
    orphans = [
        (
            str(p),
            "image without mask"
            if s not in unusable_masks
            else "image whose mask cannot be used (see the problem in masks/)",
        )
        for s, p in images.items()
        if s not in masks
    ]
    orphans += [(str(p), "mask without image") for s, p in masks.items() if s not in images]
    orphans += image_scan.problems + mask_scan.problems
    skipped = image_scan.skipped + mask_scan.skipped
    if check_files:
        _refuse_unusable_images(root / split, orphans, image_scan)
        report_entries(f"folder:{root}/{split}", orphans + skipped)
    classes_file = root / "classes.json"
    if classes_file.is_file():
        table = read_classes_json(classes_file)
        names, colors, labels = table.names, table.colors, list(range(len(table.names)))
        if colors is not None and table.ignore_color is not None:
            colors, labels = colors + [table.ignore_color], labels + [IGNORE_INDEX]
        values = value_table(table.values, table.ignore_value) if table.values is not None else None
        reader = partial(read_folder_mask, colors=colors, labels=labels, values=values)
        palette = class_colours(colors, len(names))
    else:
        all_masks = [p for s in splits for p in _files_by_stem(root / s / "masks").values()]
        scan = scan_masks(all_masks)
        if scan.colors or scan.binary_0_255:
            raise _needs_classes_json(root, scan)
        num = 1 + max((v for v in scan.labels if v != IGNORE_INDEX), default=-1)
        if num == 0:
            raise FcnsegError(f"{root}: found no readable labels in the masks; add index PNG masks or a classes.json")
        log.warning(
            "%s: no classes.json; found labels 0..%d in %d masks, so %d classes named class_0..class_%d; "
            "write %s to name them",
            root,
            num - 1,
            len(all_masks),
            num,
            num - 1,
            classes_file,
        )
        names, reader, palette = [f"class_{k}" for k in range(num)], read_folder_mask, class_colours(None, num)
    samples = [(p, masks[s]) for s, p in images.items() if s in masks]
    dataset = PairedFileDataset(
        samples,
        reader,
        class_names=names,
        palette=palette,
        split=split,
        identity=f"folder:{root}/{split}",
        check_files=check_files,
    )
    dataset.orphans = orphans
    dataset.skipped = skipped
    return dataset


def _refuse_unusable_images(folder: Path, orphans: list[tuple[str, str]], image_scan: FolderScan) -> None:
    """With check_files (training, evaluation): an image that cannot be used stops before any work,
    naming the first one; problems in masks/ alone (a mask without image) are warnings."""
    for path, problem in orphans:
        if problem == "image without mask":
            raise FcnsegError(
                f"{path} has no mask in {folder / 'masks'} (masks pair with images by file stem); "
                "run `fcnseg data check` to list all problems"
            )
        if problem.startswith("image whose mask"):
            raise FcnsegError(f"{path}: {problem}; run `fcnseg data check` to list all problems")
    if image_scan.problems:
        path, problem = image_scan.problems[0]
        raise FcnsegError(
            f"{path}: {problem} ({len(image_scan.problems)} such problem(s) in {folder / 'images'}); "
            "run `fcnseg data check` to list all problems"
        )
