"""Reading images and label masks from disk, with one clear error per bad file.

* ``read_image``: any Pillow-readable image -> (H, W, 3) uint8 RGB (``fcnseg.images.read_rgb``).
* ``read_label_png``: a palette ('P') or greyscale PNG -> (H, W) uint8 class ids (the palette is
  ignored: pixel values *are* the labels, as in PASCAL VOC's SegmentationClass).
* ``decode_colors``: an RGB colour-coded mask -> class ids through a colour table, vectorised.
* ``read_mat_array``: one array of a MATLAB file (PASCAL-Context, SIFT Flow); ``read_sbd_mat``: an
  SBD ``cls/*.mat`` file -> GTcls.Segmentation.
* ``PairedFileDataset``: the dataset class shared by every on-disk format.

Every reader raises FcnsegError naming the file when it is missing, unreadable, truncated or a
decompression bomb (the one reader, ``fcnseg.images``, the same as predict's and serve's).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fcnseg.data.base import IGNORE_INDEX, SegmentationDataset
from fcnseg.errors import FcnsegError
from fcnseg.files import check_input_file, read_error
from fcnseg.images import IMAGE_SUFFIXES, read_label, read_rgb

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # one list of image file names: fcnseg.images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB through ``fcnseg.images.read_rgb``, the reader predict and serve use too."""
    return read_rgb(path)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Class ids of an index mask (``fcnseg.images.read_label``: 'P' indices, greyscale, 16-bit
    within 0..255). Colour masks raise (they need a colour table: see ``decode_colors``)."""
    labels = read_label(path)
    if labels.ndim != 2:
        raise FcnsegError(
            f"{path}: mask is a colour image, not a single-channel index PNG; save masks as "
            "palette/greyscale PNGs of class ids, or give the colours in classes.json"
        )
    return labels


def read_mask_image(path: str | os.PathLike, by_colour: bool = False) -> tuple[np.ndarray, bool]:
    """A mask file as (array, is_color): (H, W) ids for index masks, (H, W, 3) RGB for colour masks;
    ``by_colour`` reads a palette mask by its colours (see ``fcnseg.images.read_label``)."""
    mask = read_label(path, by_colour=by_colour)
    return mask, mask.ndim == 3


def color_codes(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) int32 codes r*65536 + g*256 + b."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_colors(
    rgb: np.ndarray, colors: Sequence[Sequence[int]], labels: Sequence[int], path: str | os.PathLike
) -> np.ndarray:
    """Map every pixel's colour to its label (``colors[k]`` -> ``labels[k]``), vectorised with a
    sorted lookup. A colour not in the table is an error naming the file and the colour."""
    table = color_codes(np.asarray(colors, dtype=np.uint8).reshape(-1, 3))
    order = np.argsort(table)
    table, values = table[order], np.asarray(labels, dtype=np.uint8)[order]
    codes = color_codes(rgb)
    pos = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    unknown = table[pos] != codes
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        raise FcnsegError(
            f"{path}: pixel ({x}, {y}) has colour {tuple(int(c) for c in rgb[y, x])}, which is no class "
            f"colour ({int(unknown.sum())} such pixels); fix the mask or add the colour to the class table"
        )
    return values[pos]


def read_mat_array(
    path: str | os.PathLike, what: str, variable: str, field: str | None, wrong: str, dtype=np.uint16
) -> np.ndarray:
    """One array from a MATLAB file: ``variable`` (or its struct ``field``) as ``dtype`` class ids
    (a signed type where the file marks void with -1: SIFT Flow's geometric labels); one
    FcnsegError naming the file for every way it can fail (``wrong``: what to say of a file without it)."""
    from scipy.io import loadmat  # scipy is slow to import; only the .mat formats need it

    check_input_file(path, what)  # a folder, a FIFO or a link loop: said as it is, never opened
    name = f"{variable}.{field}" if field else variable
    try:
        mat = loadmat(path, variable_names=[variable], squeeze_me=True, struct_as_record=False)
        value = getattr(mat[variable], field) if field else mat[variable]
        array = np.asarray(value)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise TypeError(f"{name} is not a 2-D array of numbers")
        return array.astype(dtype)
    except FileNotFoundError:
        raise FcnsegError(
            f"{path}: {what} not found; check the dataset folder (`fcnseg data check` lists all)"
        ) from None
    except (KeyError, AttributeError):
        raise FcnsegError(f"{path}: {wrong}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise FcnsegError(f"{path}: cannot read {what} ({exc}); re-download or remove this file") from None


def read_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """The class segmentation of an SBD ``cls/<id>.mat`` file (struct GTcls, field Segmentation)."""
    mask = read_mat_array(
        path,
        "SBD mask",
        "GTcls",
        "Segmentation",
        "not an SBD class file (no GTcls.Segmentation); use the files in SBD's cls/ folder",
    )
    return mask.astype(np.uint8)


def read_id_list(path: Path, what: str) -> list[str]:
    """Image ids, one per line (blank lines ignored)."""
    try:
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise FcnsegError(f"{path}: split list not found; {what}") from None
    except OSError as exc:  # a folder where the list should be, permissions, ...
        raise read_error(path, exc) from None


class PairedFileDataset(SegmentationDataset):
    """Samples given as (image path, mask path) pairs; ``mask_reader(path)`` gives the class ids."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        mask_reader: Callable[[Path], np.ndarray],
        *,
        class_names: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        split: str,
        identity: str,
        check_files: bool = True,
    ):
        self.samples = list(samples)
        self.mask_reader = mask_reader
        self.class_names = tuple(class_names)
        self.palette = tuple(tuple(int(v) for v in c) for c in palette)
        self.split = split
        self.identity = identity
        self.orphans: list[tuple[str, str]] = []  # (path, problem) for files left unpaired or unusable
        self.skipped: list[tuple[str, str]] = []  # (path, reason) for entries that are not data files
        if not self.samples:
            raise FcnsegError(
                f"{identity}: the {split!r} split has no samples; check the dataset directory and split name"
            )
        if check_files:
            self._check_files_exist()

    def _check_files_exist(self) -> None:
        missing = [p for pair in self.samples for p in pair if not os.path.exists(p)]
        if missing:
            raise FcnsegError(
                f"{missing[0]} does not exist ({len(missing)} of {2 * len(self.samples)} files of "
                f"{self.identity} missing); run `fcnseg data check` to list them all"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return str(self.samples[index][0])

    def mask_name(self, index: int) -> str:
        return str(self.samples[index][1])

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.samples[index][0])

    def load_mask(self, index: int) -> np.ndarray:
        return self.mask_reader(self.samples[index][1])

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.load_image(index), self.load_mask(index)


def ignore_lut(mapping: dict[int, int], ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """A 256-entry uint8 lookup table: ``mapping`` where given, ``ignore_index`` elsewhere."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut
