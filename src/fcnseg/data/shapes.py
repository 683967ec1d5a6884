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

import math
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


@lru_cache(maxsize=8)
def _bilinear_taps(g: int, size: int) -> tuple[np.ndarray, ...]:
    """Source indices and weights of the bilinear upsampling of ``g`` cells to ``size`` pixels."""
    pos = (np.arange(size) + 0.5) * (g - 1) / size
    i0 = np.minimum(pos.astype(np.int64), g - 2)
    w = pos - i0
    return i0, i0 + 1, w, 1 - w


def _resize_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """Upsample a small (C, g, g) grid to (C, size, size), separably (rows, then columns)."""
    i0, i1, w, w0 = _bilinear_taps(grid.shape[1], size)
    rows = grid[:, i0] * w0[:, None] + grid[:, i1] * w[:, None]  # (C, size, g)
    out = np.take(rows, i0, axis=2)
    out *= w0
    right = np.take(rows, i1, axis=2)
    right *= w
    out += right
    return out


@lru_cache(maxsize=8)
def _pixel_centres(size: int) -> np.ndarray:
    """The pixel centres 0.5, 1.5, ... along one axis (rows and columns alike)."""
    centres = np.arange(size) + 0.5
    centres.flags.writeable = False
    return centres


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """The textured background, float (3, size, size), channels first.

    Each pixel gets the value of the formula ``base + smooth + amplitude * pattern(x, y) + noise``,
    bit for bit: the same operations in the same order. Terms that depend on one axis only (x * u[0],
    y * u[1], floor(x / period)) are computed once per column or row and broadcast."""
    c = _pixel_centres(size)
    base = rng.uniform(50, 200, 3)
    image = _resize_bilinear(rng.uniform(-45, 45, (5, 5, 3)).transpose(2, 0, 1), size)
    image += base[:, None, None]
    period = rng.uniform(4, 14)
    amplitude = rng.uniform(5, 35)
    if rng.random() < 0.5:  # stripes: a triangle wave along a random direction
        u = _unit_vector(rng)
        pattern = (c * u[0])[None, :] + (c * u[1])[:, None]  # x * u[0] + y * u[1]
        # Python's modulo (the result takes the divisor's sign), as np.mod computes it: the exact
        # remainder of fmod, plus the period where it is negative
        np.fmod(pattern, period, out=pattern)
        pattern[pattern < 0] += period
        pattern /= period  # the phase in [0, 1)
        pattern *= 2
        pattern -= 1
        np.abs(pattern, out=pattern)
        pattern *= 2
        pattern -= 1
    else:  # checkerboard: (floor(x / period) + floor(y / period)) % 2 * 2 - 1, exact small integers:
        # +1 where the two cell indices differ in parity, -1 where they agree
        parity = np.floor(c / period).astype(np.int64) & 1
        pattern = np.where(parity[:, None] != parity[None, :], 1.0, -1.0)
    pattern *= amplitude
    image += pattern
    image += rng.uniform(-12, 12, (size, size, 3)).transpose(2, 0, 1)
    return image


def _window(lo_x: float, hi_x: float, lo_y: float, hi_y: float, size: int) -> tuple[slice, slice]:
    """Rows and columns whose pixel centres lie within 1.5 pixels of the box: no pixel further out
    can pass a shape's test (a shape's tests err by ~1e-13 pixels, not 1)."""
    cols = slice(max(0, math.floor(lo_x) - 2), min(size, math.ceil(hi_x) + 2))
    rows = slice(max(0, math.floor(lo_y) - 2), min(size, math.ceil(hi_y) + 2))
    return rows, cols


def _shape_mask(kind: int, rng: np.random.Generator, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """One random shape of class ``kind``: the window of the image that holds it (rows, columns) and
    its boolean mask there. Each pixel is tested by the same arithmetic as on the full grid, so the
    mask equals the full-grid mask cut to the window (and it is all False outside)."""
    c = _pixel_centres(size)
    cy, cx = rng.uniform(0.05 * size, 0.95 * size, 2)
    if kind in (DISK, RING):
        if kind == DISK:
            r = rng.uniform(2.5, 0.18 * size)
        else:
            r, t = rng.uniform(4.0, 0.17 * size), rng.uniform(*RING_WIDTH)
        win = _window(cx - r, cx + r, cy - r, cy + r, size)
        dy, dx = (c[win[0]] - cy)[:, None], (c[win[1]] - cx)[None, :]
        d2 = dy * dy + dx * dx
        inside = d2 <= r * r
        return win, inside if kind == DISK else inside & (d2 >= (r - t) * (r - t))
    if kind == RECTANGLE:
        u = _unit_vector(rng)
        half_w, half_h = rng.uniform(2.0, 0.16 * size, 2)
        reach = half_w + half_h  # no corner is further than this from the centre along either axis
        win = _window(cx - reach, cx + reach, cy - reach, cy + reach, size)
        dy, dx = (c[win[0]] - cy)[:, None], (c[win[1]] - cx)[None, :]
        along = dx * u[0] + dy * u[1]
        across = -dx * u[1] + dy * u[0]
        return win, (np.abs(along) <= half_w) & (np.abs(across) <= half_h)
    if kind == TRIANGLE:  # roughly equilateral: three radii at 120 degree steps, jittered
        u = _unit_vector(rng)
        dirs = [u, np.array([-0.5 * u[0] - _SQRT3_2 * u[1], _SQRT3_2 * u[0] - 0.5 * u[1]])]
        dirs.append(-dirs[0] - dirs[1])
        r = rng.uniform(3.5, 0.2 * size)
        pts = [np.array([cx, cy]) + d * r * rng.uniform(0.75, 1.15) for d in dirs]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        win = _window(min(xs), max(xs), min(ys), max(ys), size)
        yy, xx = c[win[0]][:, None], c[win[1]][None, :]
        inside = None
        for a, b in zip(pts, pts[1:] + pts[:1]):  # counter-clockwise: the inside is left of each edge
            left = (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0]) >= 0
            inside = left if inside is None else inside & left
        return win, inside
    if kind == LINE:  # a segment from the centre, 1 to 2.2 pixels thick
        u = _unit_vector(rng)
        length = rng.uniform(0.25 * size, 0.8 * size)
        ex, ey = u * length
        half = rng.uniform(*LINE_WIDTH) / 2
        win = _window(
            min(cx, cx + ex) - half, max(cx, cx + ex) + half, min(cy, cy + ey) - half, max(cy, cy + ey) + half, size
        )
        dy, dx = (c[win[0]] - cy)[:, None], (c[win[1]] - cx)[None, :]
        t = np.clip((dx * ex + dy * ey) / (length * length), 0.0, 1.0)
        px, py = dx - t * ex, dy - t * ey
        return win, px * px + py * py <= half * half
    raise ValueError(f"unknown shape class {kind}")


@lru_cache(maxsize=1024)
def render(seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The image (size, size, 3) uint8 and mask (size, size) uint8 drawn from ``seed``.

    Each shape is computed only in the window that holds it (see ``_shape_mask``); the pixels are
    those of the full-grid formulas, bit for bit (a test pins them)."""
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    kinds = [int(k) for k in rng.integers(DISK, TRIANGLE + 1, int(rng.integers(3, 7)))]
    kinds += [LINE] * int(rng.integers(1, 3)) + [RING] * int(rng.integers(0, 3))
    for k in rng.permutation(len(kinds)):
        kind = kinds[k]
        win, m = _shape_mask(kind, rng, size)
        colour = rng.uniform(0, 255, 3)
        image[:, win[0], win[1]][:, m] = (colour + rng.uniform(-10, 10, (int(np.count_nonzero(m)), 3))).T
        mask[win][m] = kind
    np.clip(image, 0, 255, out=image)
    image = image.transpose(1, 2, 0).astype(np.uint8, order="C")
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
