"""HHA: a depth map encoded as three 8-bit channels (Gupta, Girshick, Arbelaez and Malik, ECCV 2014).

    H  horizontal disparity     31000 / depth in cm (depth clipped at 100 cm below), as saveHHA.m
    H  height above ground      cm above the lowest point of the scene (taken as 130 cm below the
                                camera when nothing lies 90 cm or more below it)
    A  angle with gravity       degrees between the local surface normal and the gravity direction,
                                + 38 (128 for walls; 38 / 218 for ceilings / floors)

each rounded and saturated to 0..255, the way rcnn-depth's saveHHA.m writes its PNGs (the images
the FCN authors trained the NYUDv2 HHA models on ship precomputed in their NYUDv2 folder, data/hha/;
this module computes the same encoding where a folder has only depth).

The steps: back-project every pixel with the camera intrinsics (x right, y down, z forward, 1-based
pixel centres as Gupta's getPointCloudFromZ); a surface normal per pixel from a least-squares plane
through the valid points of a square window (facing the camera); gravity estimated from the normals
by Gupta et al.'s iteration (CVPR 2013): start from the camera's down axis, collect the normals
within ``d`` degrees of parallel and of perpendicular to it, and take the direction that is most
parallel to the first and most perpendicular to the second (the smallest eigenvector of
``sum(n n^T, perpendicular) - sum(n n^T, parallel)``), for d = 45 then 15 degrees, 5 times each.

Pixels without depth (0) get 0 in all three channels and do not take part in the normals.
Computed images are cached per depth file's content (``cached_hha``), written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fcnseg.errors import FcnsegError
from fcnseg.files import fcnseg_home

log = logging.getLogger(__name__)

HHA_VERSION = 1  # part of the cache key: bump when the encoding changes
ANGLE_OFFSET = 128 - 90  # saveHHA.m: angle + 128 - 90, "keeping some slack"
DISPARITY_SCALE = 31000.0  # saveHHA.m: 31000 / depth in cm
MIN_DEPTH_CM = 100.0
NORMAL_RADIUS = 3  # window radius of the normals in the A channel
GRAVITY_RADIUS = 10  # coarser normals for the gravity estimate
GRAVITY_SCHEDULE = ((45.0, 5), (15.0, 5))  # (threshold in degrees, iterations)


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels (1-based principal point, as the NYU toolbox gives them)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def cropped(self, left: float, top: float) -> Camera:
        """The same camera for an image cropped by ``left`` columns and ``top`` rows."""
        return replace(self, cx=self.cx - left, cy=self.cy - top)


# The NYU Depth V2 toolbox's colour camera (camera_params.m: fx_rgb, fy_rgb, cx_rgb, cy_rgb), 640x480.
NYUD_CAMERA = Camera(518.857901, 519.469611, 325.582449, 253.736166)
NYUD_SIZE = (640, 480)
# Gupta et al.'s 561x427 crop of it (rows 45..471, columns 41..601 of the 640x480 frame).
_KNOWN_CROPS = {(640, 480): (0, 0), (561, 427): (40, 44)}


def nyud_camera(width: int, height: int) -> Camera:
    """NYUDv2's colour camera for an image of ``width`` x ``height``: the full frame, Gupta's crop,
    or (other sizes) a centred crop of the 640x480 frame."""
    left, top = _KNOWN_CROPS.get((width, height), ((NYUD_SIZE[0] - width) / 2, (NYUD_SIZE[1] - height) / 2))
    return NYUD_CAMERA.cropped(left, top)


def point_cloud(depth_cm: np.ndarray, camera: Camera) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) points (x right, y down, z forward) in the depth's unit."""
    h, w = depth_cm.shape
    cols = np.arange(1, w + 1, dtype=np.float64)[None, :]
    rows = np.arange(1, h + 1, dtype=np.float64)[:, None]
    z = depth_cm.astype(np.float64)
    return np.stack(((cols - camera.cx) * z / camera.fx, (rows - camera.cy) * z / camera.fy, z), axis=-1)


def _box_sum(values: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)^2 window around every pixel (windows clipped at the borders), any trailing dims."""
    h, w = values.shape[:2]
    padded = np.zeros((h + 1, w + 1) + values.shape[2:], dtype=np.float64)
    padded[1:, 1:] = values.cumsum(0).cumsum(1)
    r0 = np.clip(np.arange(h) - radius, 0, h)
    r1 = np.clip(np.arange(h) + radius + 1, 0, h)
    c0 = np.clip(np.arange(w) - radius, 0, w)
    c1 = np.clip(np.arange(w) + radius + 1, 0, w)
    return padded[r1][:, c1] - padded[r0][:, c1] - padded[r1][:, c0] + padded[r0][:, c0]  # integral image, four corners


def surface_normals(points: np.ndarray, valid: np.ndarray, radius: int) -> np.ndarray:
    """(H, W, 3) unit normals of the least-squares plane through the valid points of each window,
    turned to face the camera; zero where a window has fewer than 3 valid points."""
    weight = valid.astype(np.float64)
    p = points * weight[..., None]
    count = _box_sum(weight, radius)
    total = _box_sum(p, radius)
    outer = _box_sum(p[..., :, None] * points[..., None, :], radius)  # sum of p p^T over valid points
    n = np.maximum(count, 1.0)[..., None]
    mean = total / n
    cov = outer / n[..., None] - mean[..., :, None] * mean[..., None, :]
    _, vectors = np.linalg.eigh(cov)
    normals = vectors[..., :, 0]  # eigh sorts eigenvalues ascending: the plane's normal comes first
    facing = np.sum(normals * points, axis=-1) > 0  # pointing away from the camera at the origin
    normals[facing] *= -1
    normals[(count < 3) | ~valid] = 0.0
    return normals


def gravity_direction(normals: np.ndarray, schedule=GRAVITY_SCHEDULE) -> np.ndarray:
    """Gravity (pointing down, y-down camera frame) estimated from (H, W, 3) normals (zeros ignored)."""
    n = normals.reshape(-1, 3)
    n = n[np.linalg.norm(n, axis=1) > 0.5]
    g = np.array([0.0, 1.0, 0.0])
    for threshold, iterations in schedule:
        for _ in range(iterations):
            cos = np.clip(n @ g, -1.0, 1.0)
            angle = np.degrees(np.arccos(cos))
            parallel = n[(angle < threshold) | (angle > 180.0 - threshold)]
            perpendicular = n[np.abs(angle - 90.0) < threshold]
            if len(parallel) + len(perpendicular) == 0:
                return g
            matrix = perpendicular.T @ perpendicular - parallel.T @ parallel
            _, vectors = np.linalg.eigh(matrix)
            g = vectors[:, 0]
            if g[1] < 0:  # keep it pointing down, like the camera's y axis
                g = -g
    return g


@dataclass(frozen=True)
class HHAChannels:
    """The three channels before 8-bit rounding: disparity, height (cm), angle (degrees)."""

    disparity: np.ndarray
    height: np.ndarray
    angle: np.ndarray
    gravity: np.ndarray
    valid: np.ndarray


def hha_channels(depth_m: np.ndarray, camera: Camera) -> HHAChannels:
    """HHA's three channels as floats for an (H, W) depth map in metres (0 = no depth)."""
    depth_cm = np.asarray(depth_m, dtype=np.float64) * 100.0
    valid = depth_cm > 0
    if not valid.any():
        raise FcnsegError("the depth map has no valid pixel (every value is 0); check the depth file")
    points = point_cloud(depth_cm, camera)
    normals = surface_normals(points, valid, NORMAL_RADIUS)
    gravity = gravity_direction(surface_normals(points, valid, GRAVITY_RADIUS))
    height = -(points @ gravity)  # up is minus gravity
    lowest = float(height[valid].min())
    if lowest > -90.0:  # nothing 90 cm below the camera: no floor in view, assume 130 cm
        lowest = -130.0
    height = height - lowest
    angle = np.degrees(np.arccos(np.clip(normals @ gravity, -1.0, 1.0)))
    disparity = DISPARITY_SCALE / np.maximum(depth_cm, MIN_DEPTH_CM)
    return HHAChannels(disparity, height, angle, gravity, valid)


def encode_hha(depth_m: np.ndarray, camera: Camera) -> np.ndarray:
    """(H, W, 3) uint8 HHA image for an (H, W) depth map in metres."""
    c = hha_channels(depth_m, camera)
    stacked = np.stack((c.disparity, c.height, c.angle + ANGLE_OFFSET), axis=-1)
    out = np.clip(np.rint(stacked), 0, 255).astype(np.uint8)
    out[~c.valid] = 0
    return out


def cache_dir() -> Path:
    """Where computed HHA images are kept: $FCNSEG_HOME/hha (default ~/.cache/fcnseg/hha)."""
    return fcnseg_home() / "hha"


def cache_key(depth_file: bytes, camera: Camera, depth_scale: float) -> str:
    """The cache file's name: a digest of the depth file's bytes, the camera and the encoding version."""
    digest = hashlib.sha256(depth_file)
    digest.update(repr((HHA_VERSION, camera, depth_scale)).encode())
    return digest.hexdigest()[:32]


def cached_hha(depth_path: str | os.PathLike, *, depth_scale: float = 1000.0, camera: Camera | None = None):
    """The HHA image (H, W, 3 uint8) of a depth PNG (values / ``depth_scale`` = metres; NYUDv2's are
    millimetres), computed once per file content and camera and cached as a PNG under ``cache_dir()``."""
    from PIL import Image

    from fcnseg.files import WriteError, read_error
    from fcnseg.images import read_depth, read_rgb, save_image

    path = Path(depth_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FcnsegError(f"{path}: depth map not found; HHA needs the depth of every image") from None
    except OSError as exc:
        raise read_error(path, exc) from None
    depth = read_depth(path) / depth_scale
    camera = camera or nyud_camera(depth.shape[1], depth.shape[0])
    cached = cache_dir() / f"{cache_key(data, camera, depth_scale)}.png"
    if cached.is_file():
        try:
            return read_rgb(cached)
        except FcnsegError as exc:  # a damaged cache file is recomputed, never trusted
            log.warning("%s; computing it again", exc)
    hha = encode_hha(depth, camera)
    try:
        save_image(Image.fromarray(hha), cached)
    except WriteError as exc:  # a read-only cache only costs the time to compute it again
        log.warning("HHA cache not written (%s); continuing without it", exc)
    return hha
