"""`shapes`: a built-in segmentation dataset generated on the fly, no download.

Each 96x96 image shows a few shapes on a textured background (smooth colour noise plus stripes or
a checkerboard, plus pixel noise). Shape colours are random, so the class is told by the *shape*,
not the colour. Classes:

    0 background   1 disk   2 rectangle (rotated)   3 triangle   4 line (1-2 px thin)   5 ring (thin)

Disks, rectangles and triangles come in sizes from a few pixels up to a third of the image, lines
and rings are 1-2.5 pixels thick: a net that only sees stride-32 features (FCN-32s) loses them,
skips at stride 16 and 8 recover them. Reference points on val (labels area-averaged over stride x
stride cells, upsampled bilinearly, argmax): mean IU 0.18 at stride 32, 0.35 at 16, 0.53 at 8. They
are not hard limits: a net's stride-8 features also say where an edge lies inside a cell, and the
demo's FCN-8s reaches about 0.55.

Sample ``i`` of a split is drawn from ``numpy.random.default_rng(split_seed + i)`` using only
uniform draws and exactly rounded arithmetic (+ - * / sqrt, no trigonometry), so the pixels are
identical on every machine. Splits: ``train`` (400 images, seeds 0..399), ``val`` (100 images,
seeds 100000..100099) and ``stream``, a procedurally generated training stream of a million fresh
images (seeds 1000000..1999999, disjoint from val and train): a demo-length run never sees an image
twice, so it cannot overfit. Batch 8 needs 125,000 iterations to see every stream image once.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fcnseg.data.base import SegmentationDataset, check_split
from fcnseg.errors import FcnsegError

CLASS_NAMES = ("background", "disk", "rectangle", "triangle", "line", "ring")
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48))
SPLITS = {
    "train": (0, 400),
    "val": (100_000, 100),  # split -> (first seed, number of images)
    "stream": (1_000_000, 1_000_000),
}
IMAGE_SIZE = 96

LINE_WIDTH = (1.0, 2.2)  # pixels
RING_WIDTH = (1.2, 2.5)
DISK, RECTANGLE, TRIANGLE, LINE, RING = 1, 2, 3, 4, 5
_SQRT3_2 = np.sqrt(3.0) / 2.0  # sin(120 degrees), exactly rounded


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    """A random direction, from uniform draws and sqrt only (same bits on every platform)."""
    while True:
        v = rng.uniform(-1.0, 1.0, 2)
        n2 = v[0] * v[0] + v[1] * v[1]
        if 0.01 < n2 <= 1.0:
            return v / np.sqrt(n2)


def _resize_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """Upsample a small (g, g, C) grid to (size, size, C), separably and vectorised."""
    g = grid.shape[0]
    pos = (np.arange(size) + 0.5) * (g - 1) / size
    i0 = np.minimum(pos.astype(np.int64), g - 2)
    w = (pos - i0)[:, None, None]
    rows = grid[i0] * (1 - w) + grid[i0 + 1] * w  # (size, g, C)
    w = w.reshape(1, size, 1)
    return rows[:, i0] * (1 - w) + rows[:, i0 + 1] * w


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    size = yy.shape[0]
    base = rng.uniform(50, 200, 3)
    smooth = _resize_bilinear(rng.uniform(-45, 45, (5, 5, 3)), size)
    period = rng.uniform(4, 14)
    amplitude = rng.uniform(5, 35)
    if rng.random() < 0.5:  # stripes: a triangle wave along a random direction
        u = _unit_vector(rng)
        phase = np.mod(xx * u[0] + yy * u[1], period) / period
        pattern = np.abs(2 * phase - 1) * 2 - 1
    else:  # checkerboard
        pattern = (np.floor(xx / period) + np.floor(yy / period)) % 2 * 2 - 1
    image = base + smooth + (amplitude * pattern)[..., None]
    return image + rng.uniform(-12, 12, image.shape)


def _shape_mask(kind: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean mask of one random shape of class ``kind``."""
    size = yy.shape[0]
    cy, cx = rng.uniform(0.05 * size, 0.95 * size, 2)
    dy, dx = yy - cy, xx - cx
    d2 = dy * dy + dx * dx
    if kind == DISK:
        r = rng.uniform(2.5, 0.18 * size)
        return d2 <= r * r
    if kind == RING:
        r = rng.uniform(4.0, 0.17 * size)
        t = rng.uniform(*RING_WIDTH)
        return (d2 <= r * r) & (d2 >= (r - t) * (r - t))
    if kind == RECTANGLE:
        u = _unit_vector(rng)
        half_w, half_h = rng.uniform(2.0, 0.16 * size, 2)
        along = dx * u[0] + dy * u[1]
        across = -dx * u[1] + dy * u[0]
        return (np.abs(along) <= half_w) & (np.abs(across) <= half_h)
    if kind == TRIANGLE:  # roughly equilateral: three radii at 120 degree steps, jittered
        u = _unit_vector(rng)
        dirs = [u, np.array([-0.5 * u[0] - _SQRT3_2 * u[1], _SQRT3_2 * u[0] - 0.5 * u[1]])]
        dirs.append(-dirs[0] - dirs[1])
        r = rng.uniform(3.5, 0.2 * size)
        pts = [np.array([cx, cy]) + d * r * rng.uniform(0.75, 1.15) for d in dirs]
        inside = np.ones_like(d2, dtype=bool)
        for a, b in zip(pts, pts[1:] + pts[:1]):  # counter-clockwise: the inside is left of each edge
            inside &= (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0]) >= 0
        return inside
    if kind == LINE:  # a segment from the centre, 1 to 2.2 pixels thick
        u = _unit_vector(rng)
        length = rng.uniform(0.25 * size, 0.8 * size)
        ex, ey = u * length
        t = np.clip((dx * ex + dy * ey) / (length * length), 0.0, 1.0)
        px, py = dx - t * ex, dy - t * ey
        half = rng.uniform(*LINE_WIDTH) / 2
        return px * px + py * py <= half * half
    raise ValueError(f"unknown shape class {kind}")


@lru_cache(maxsize=1024)
def render(seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The image (size, size, 3) uint8 and mask (size, size) uint8 drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    image = _background(rng, yy, xx)
    mask = np.zeros((size, size), dtype=np.uint8)
    kinds = [int(k) for k in rng.integers(DISK, TRIANGLE + 1, int(rng.integers(3, 7)))]
    kinds += [LINE] * int(rng.integers(1, 3)) + [RING] * int(rng.integers(0, 3))
    for k in rng.permutation(len(kinds)):
        kind = kinds[k]
        m = _shape_mask(kind, rng, yy, xx)
        colour = rng.uniform(0, 255, 3)
        image[m] = colour + rng.uniform(-10, 10, (int(m.sum()), 3))
        mask[m] = kind
    image = np.clip(image, 0, 255).astype(np.uint8)
    image.flags.writeable = False
    mask.flags.writeable = False
    return image, mask


class ShapesDataset(SegmentationDataset):
    """The built-in generated dataset (see the module docstring)."""

    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, split: str = "train", size: int = IMAGE_SIZE):
        check_split(split, tuple(SPLITS), "the shapes dataset")
        self.split = split
        self.size = size
        self.first_seed, self.length = SPLITS[split]
        self.identity = f"shapes/{split}/{size}"

    def __len__(self) -> int:
        return self.length

    def sample_name(self, index: int) -> str:
        return f"shapes/{self.split}/{index:04d}"

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return render(self.first_seed + index, self.size)


def open_shapes(arg: str, split: str, check_files: bool = True) -> ShapesDataset:
    if arg:
        raise FcnsegError(f"the shapes dataset takes no path (got 'shapes:{arg}'); write just 'shapes'")
    return ShapesDataset(split)
