"""Per-class pixel frequencies (computed once, cached on disk) and median-frequency class weights."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from fcnseg.data.base import SegmentationDataset
from fcnseg.errors import FcnsegError
from fcnseg.files import clean_stale_temps, write_json

log = logging.getLogger("fcnseg.data")


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


def content_key(dataset: SegmentationDataset) -> str | None:
    """A key that changes whenever the masks do: identity, length, classes and every mask file's
    path, size and modification time (datasets not made of files, like ``shapes``, are keyed by their
    identity, which holds their seed). None when the dataset has no identity: nothing is cached."""
    if not dataset.identity:
        return None
    h = hashlib.sha1(f"{dataset.identity}|{len(dataset)}|{dataset.num_classes}|{dataset.ignore_index}".encode())
    for i in range(len(dataset)):
        name = dataset.mask_name(i)
        try:
            st = os.stat(name)
            h.update(f"|{name}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:  # not a file (a generated dataset's sample id) or missing
            h.update(f"|{name}|-".encode())
    return h.hexdigest()


def _cache_file(dataset: SegmentationDataset, cache_dir: str | os.PathLike) -> Path | None:
    key = content_key(dataset)
    return None if key is None else Path(cache_dir) / "class_frequencies" / (key[:24] + ".json")


def class_frequencies(dataset: SegmentationDataset, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """Fraction of labelled pixels in each class (sums to 1), float64 of length num_classes.

    The result is cached as JSON under ``cache_dir`` (default: see ``default_cache_dir``), keyed by
    content (see ``content_key``): changed masks under the same path are never served stale counts.
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
            clean_stale_temps(path.parent, older_than_s=3600)
            write_json(path, {"identity": dataset.identity, "counts": counts.tolist()})
        except FcnsegError as exc:  # a cache that cannot be written only costs a recomputation next time
            log.info("class-frequency cache not written: %s", exc)
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
