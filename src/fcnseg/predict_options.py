"""Bounds of the inference options a user or a client gives, in one place: `fcnseg predict` and
`fcnseg serve` parse ``--scales``/``scales=`` and check ``--tile``/``tile=`` with these functions, so
the same value is accepted or refused the same way by both.

* tile: 0 (always the whole image) or MIN_TILE..MAX_TILE pixels; below MIN_TILE a tile holds about
  one output cell of a stride-32 network, above MAX_TILE it is no longer a tile worth bounding memory by;
* scales: 1..MAX_SCALES comma-separated numbers in SCALE_RANGE (each scale is a full forward pass).
"""

from __future__ import annotations

from fcnseg.errors import FcnsegError

MIN_TILE = 32
MAX_TILE = 4096
MAX_SCALES = 4
SCALE_RANGE = (0.25, 2.0)


def tile_problem(tile: int | None) -> str | None:
    """Why ``tile`` is refused (None when it is fine; None itself means "the default")."""
    if tile is None or tile == 0 or MIN_TILE <= tile <= MAX_TILE:
        return None
    return f"must be 0 (whole image) or {MIN_TILE}-{MAX_TILE} pixels"


def check_tile(tile: int | None, option: str = "--tile") -> int | None:
    problem = tile_problem(tile)
    if problem:
        raise FcnsegError(f"{option} {tile}: {problem}")
    return tile


def parse_scales(text: str | None, option: str = "--scales") -> tuple[float, ...]:
    """ "0.75,1,1.25" -> (0.75, 1.0, 1.25); None or blank -> (1.0,); anything else one FcnsegError."""
    if text is None or not text.strip():
        return (1.0,)
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    lo, hi = SCALE_RANGE
    if not scales or len(scales) > MAX_SCALES or not all(lo <= s <= hi for s in scales):
        raise FcnsegError(
            f"{option} {text!r}: give 1 to {MAX_SCALES} comma-separated numbers in [{lo:g}, {hi:g}], e.g. 0.75,1,1.25"
        )
    return scales
