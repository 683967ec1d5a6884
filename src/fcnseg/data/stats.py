"""Per-class pixel frequencies (computed once, cached on disk) and median-frequency class weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from fcnseg.data.base import SegmentationDataset


def default_cache_dir() -> Path:
    """``$FCNSEG_CACHE`` or ``~/.cache/fcnseg``."""
    return Path(os.environ.get("FCNSEG_CACHE") or Path.home() / ".cache" / "fcnseg")


def class_pixel_counts(dataset: SegmentationDataset) -> np.ndarray:
    """Labelled pixels per class over the whole dataset (ignore and out-of-range labels not counted)."""
    n = dataset.num_classes
    counts = np.zeros(n, dtype=np.int64)
    for i in range(len(dataset)):
        mask = dataset.load_mask(i)
        labels = mask[mask < n] if mask.dtype == np.uint8 else mask[(mask >= 0) & (mask < n)]
        counts += np.bincount(labels.astype(np.intp), minlength=n)
    return counts


def _cache_file(dataset: SegmentationDataset, cache_dir: str | os.PathLike) -> Path | None:
    if not dataset.identity:
        return None
    key = f"{dataset.identity}|{len(dataset)}|{dataset.num_classes}"
    return Path(cache_dir) / "class_frequencies" / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")


def class_frequencies(dataset: SegmentationDataset, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """Fraction of labelled pixels in each class (sums to 1), float64 of length num_classes.

    The result is cached as JSON under ``cache_dir`` (default: see ``default_cache_dir``), keyed by
    the dataset's identity (format, root, split), its length and class count.
    """
    path = _cache_file(dataset, cache_dir if cache_dir is not None else default_cache_dir())
    if path is not None and path.is_file():
        try:
            counts = np.array(json.loads(path.read_text())["counts"], dtype=np.int64)
            if counts.shape == (dataset.num_classes,):
                return _normalise(counts)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is recomputed
    counts = class_pixel_counts(dataset)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"identity": dataset.identity, "counts": counts.tolist()}))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs a recomputation next time
    return _normalise(counts)


def _normalise(counts: np.ndarray) -> torch.Tensor:
    total = counts.sum()
    return torch.from_numpy(counts / total if total else counts.astype(np.float64))


def median_frequency_weights(freqs: torch.Tensor) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus 2015): weight_c = median(freq) / freq_c, the median
    taken over the classes that occur. Classes that never occur get weight 0. float32."""
    freqs = torch.as_tensor(freqs, dtype=torch.float64)
    present = freqs > 0
    weights = torch.zeros_like(freqs)
    if present.any():
        weights[present] = torch.quantile(freqs[present], 0.5) / freqs[present]
    return weights.float()
