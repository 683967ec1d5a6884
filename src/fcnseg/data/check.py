"""`fcnseg data check`: read every sample of a dataset and list every problem found.

Problems: image without mask (and mask without image), missing, unreadable or truncated files,
broken links, symlink loops, FIFOs and other non-files, two files with one name, mask size differing
from its image, label values that are neither a class id nor 255. Entries that are not data files
(another suffix, a subfolder) are listed as SKIPPED, without failing the check.
The report also gives sample counts, image sizes and pixel counts per class.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fcnseg.data.base import SegmentationDataset, bad_labels, bad_labels_message, load_dataset, parse_spec
from fcnseg.errors import FcnsegError


def default_splits(spec: str) -> list[str]:
    """The splits `check` looks at when none is named."""
    name, arg = parse_spec(spec)
    if name == "voc-aug":
        return ["train_aug", "seg11valid"]
    if name == "folder" and Path(arg).is_dir():
        return sorted(p.name for p in Path(arg).iterdir() if (p / "images").is_dir()) or ["train"]
    return ["train", "val"]


def _problem(file: str, message: str) -> dict[str, str]:
    """A problem entry; a message that starts with the file name does not repeat it."""
    return {"file": file, "problem": message.removeprefix(f"{file}: ")}


def _check_sample(
    dataset: SegmentationDataset, index: int
) -> tuple[tuple[int, int] | None, np.ndarray | None, list[dict]]:
    """(image (W, H) or None, per-label pixel counts (256,) or None, problems) for one sample."""
    problems = []

    def attempt(load, name: str):
        try:
            return load(index)
        except FcnsegError as exc:
            problems.append(_problem(name, str(exc)))
            return None

    image = attempt(dataset.load_image, dataset.sample_name(index))
    mask = attempt(dataset.load_mask, dataset.mask_name(index))
    size = (int(image.shape[1]), int(image.shape[0])) if image is not None else None
    counts = None
    if mask is not None:
        name = dataset.mask_name(index)
        if image is not None and image.shape[:2] != mask.shape:
            problems.append(
                _problem(
                    name, f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
                )
            )
        counts = np.bincount(mask.ravel().astype(np.int64).clip(0, 255), minlength=256)
        bad = bad_labels(mask, dataset.num_classes, dataset.ignore_index)
        if bad:
            problems.append(_problem(name, bad_labels_message(bad, dataset.num_classes, dataset.ignore_index)))
    for target in dataset.extra_targets:  # other labellings of the pixels (SIFT Flow's geometric classes)
        name = dataset.extra_name(index, target.name)
        labels = attempt(lambda i, t=target.name: dataset.load_extra(i, t), name)
        if labels is None:
            continue
        if image is not None and image.shape[:2] != labels.shape:
            problems.append(
                _problem(
                    name,
                    f"{target.name} labels are {labels.shape[1]}x{labels.shape[0]} but the image is "
                    f"{image.shape[1]}x{image.shape[0]}",
                )
            )
        bad = bad_labels(labels, target.num_classes, dataset.ignore_index)
        if bad:
            message = bad_labels_message(bad, target.num_classes, dataset.ignore_index)
            problems.append(_problem(name, f"{target.name} {message}"))
    return size, counts, problems


def check_split(spec: str, split: str, workers: int = 2) -> dict[str, Any]:
    """The report for one split (see the module docstring)."""
    try:
        dataset = load_dataset(spec, split, check_files=False)
    except FcnsegError as exc:
        return {"split": split, "samples": 0, "problems": [_problem(spec, str(exc))]}
    problems = [_problem(path, problem) for path, problem in getattr(dataset, "orphans", [])]
    skipped = [_problem(path, reason) for path, reason in getattr(dataset, "skipped", [])]
    sizes: Counter[str] = Counter()
    counts = np.zeros(256, dtype=np.int64)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow and zlib release the GIL while decoding
        for size, sample_counts, sample_problems in pool.map(lambda i: _check_sample(dataset, i), range(len(dataset))):
            if size is not None:
                sizes[f"{size[0]}x{size[1]}"] += 1
            if sample_counts is not None:
                counts += sample_counts
            problems += sample_problems
    n = dataset.num_classes
    return {
        "split": split,
        "samples": len(dataset),
        "num_classes": n,
        "image_sizes": dict(sizes.most_common()),
        "class_pixels": {name: int(c) for name, c in zip(dataset.class_names, counts[:n])},
        "ignore_pixels": int(counts[dataset.ignore_index]),
        "problems": problems,
        "skipped": skipped,
    }


# Before training, every file of both splits is checked from its header (cheap: no pixel is decoded):
# it exists, is an image within the decompression-bomb limit, and the mask has its image's size. Splits
# of at most FULL_CHECK_SAMPLES samples are decoded in full as `fcnseg data check` does (labels too);
# in larger ones a bad label is caught on first touch, when the loader reads the mask (the trainer
# saves last.pt before every validation, so a bad val mask found late loses nothing).
FULL_CHECK_SAMPLES = 500


def _header_problems(dataset: SegmentationDataset, index: int) -> list[dict]:
    from fcnseg.images import image_size

    image_path, mask_path = (Path(p) for p in dataset.samples[index])
    problems, sizes = [], []
    for path, what in ((image_path, "image"), (mask_path, "mask")):
        if path.suffix.lower() == ".mat":  # SBD masks: no image header to read; existence only
            if not path.is_file():
                problems.append(_problem(str(path), f"{path}: {what} not found"))
            continue
        try:
            sizes.append(image_size(path, what))
        except FcnsegError as exc:
            problems.append(_problem(str(path), str(exc)))
    if len(sizes) == 2 and sizes[0] != sizes[1]:
        problems.append(
            _problem(
                str(mask_path), f"mask is {sizes[1][0]}x{sizes[1][1]} but the image is {sizes[0][0]}x{sizes[0][1]}"
            )
        )
    return problems


def preflight(dataset: SegmentationDataset, workers: int = 2, limit: int | None = None) -> dict[int, list[dict]]:
    """Problems found before training, by sample index (see FULL_CHECK_SAMPLES for what is checked).

    ``limit`` checks only the first ``limit`` samples (e.g. --max-val-images). Datasets that are not
    made of files (``shapes``) have nothing to check."""
    if not hasattr(dataset, "samples"):
        return {}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    full = n <= FULL_CHECK_SAMPLES
    check = (lambda i: _check_sample(dataset, i)[2]) if full else (lambda i: _header_problems(dataset, i))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = pool.map(check, range(n))
        return {i: problems for i, problems in enumerate(found) if problems}


def check_dataset(spec: str, splits: list[str] | None = None, workers: int = 2) -> dict[str, Any]:
    """Reports for ``splits`` (default: see ``default_splits``) and the total number of problems."""
    reports = [check_split(spec, s, workers) for s in (splits or default_splits(spec))]
    return {"spec": spec, "splits": reports, "num_problems": sum(len(r["problems"]) for r in reports)}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_report(report: dict[str, Any], max_problems: int = 50) -> str:
    """Human-readable text of a `check_dataset` report."""
    lines = [f"dataset {report['spec']}"]
    for r in report["splits"]:
        lines.append(f"  split {r['split']}: {r['samples']} samples, {_plural(len(r['problems']), 'problem')}")
        if r.get("image_sizes"):
            sizes = list(r["image_sizes"].items())
            shown = ", ".join(f"{s} ({c})" for s, c in sizes[:5]) + (
                f", ... {len(sizes) - 5} more" if len(sizes) > 5 else ""
            )
            lines.append(f"    image sizes: {shown}")
        if r.get("class_pixels"):
            total = sum(r["class_pixels"].values()) or 1
            lines.append(
                "    class pixels: "
                + ", ".join(f"{name} {c} ({100 * c / total:.1f}%)" for name, c in r["class_pixels"].items())
            )
            lines.append(f"    ignore pixels: {r['ignore_pixels']}")
        for p in r["problems"][:max_problems]:
            lines.append(f"    PROBLEM {p['file']}: {p['problem']}")
        if len(r["problems"]) > max_problems:
            lines.append(f"    ... {len(r['problems']) - max_problems} more problems (all in --json FILE)")
        for p in r.get("skipped", [])[:max_problems]:
            lines.append(f"    SKIPPED {p['file']}: {p['problem']}")
        if len(r.get("skipped", [])) > max_problems:
            lines.append(f"    ... {len(r['skipped']) - max_problems} more skipped (all in --json FILE)")
    lines.append(
        "OK: no problems" if report["num_problems"] == 0 else f"FAILED: {_plural(report['num_problems'], 'problem')}"
    )
    return "\n".join(lines)
