"""Turning label maps into pictures: colourise with a palette, blend over the image, save index PNGs,
and the pieces of labelled figures: nearest-neighbour upscaling, text, a colour legend with class names."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from fcnseg.files import write_bytes
from fcnseg.images import encode_image, save_image

IGNORE_COLOR = (255, 255, 255)
# In figures with white separators, ignore pixels are drawn as this grey checkerboard ("no label").
IGNORE_CHECKER = ((150, 150, 150), (205, 205, 205))


def palette_array(palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """A (256, 3) uint8 lookup table: class i -> palette[i], ignore_index -> white, rest black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    if 0 <= ignore_index < 256 and ignore_index >= len(palette):
        lut[ignore_index] = IGNORE_COLOR
    return lut


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """HxW integer labels -> HxWx3 uint8 RGB."""
    mask = np.asarray(mask)
    return palette_array(palette, ignore_index)[np.clip(mask, 0, 255).astype(np.uint8)]


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    background: int | None = 0,
) -> np.ndarray:
    """Blend the colourised mask over an HxWx3 uint8 image. Pixels of class ``background`` keep the
    photo as it is (its brightness and colours); ``background=None`` blends every class."""
    photo = np.asarray(image)[..., :3]
    color = colorize(mask, palette).astype(np.float32)
    out = np.clip((1 - alpha) * photo.astype(np.float32) + alpha * color + 0.5, 0, 255).astype(np.uint8)
    if background is not None:
        keep = np.asarray(mask) == background
        out[keep] = photo[keep]
    return out


def legend_entries(
    mask: np.ndarray, class_names: Sequence[str], palette: Sequence[Sequence[int]], background: int | None = 0
) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of every class present in ``mask`` except ``background``, in class order."""
    present = np.flatnonzero(np.bincount(np.asarray(mask).ravel().astype(np.int64).clip(0), minlength=len(palette)))
    lut = palette_array(palette)
    return [
        (str(class_names[k]) if k < len(class_names) else str(k), tuple(int(v) for v in lut[min(k, 255)]))
        for k in present
        if k != background and k < max(len(class_names), len(palette))
    ]


def with_legend(image: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """The image with a white band below it: a colour swatch and the name of each entry, wrapped to
    the image's width (``entries`` from :func:`legend_entries`; none: the band says so)."""
    from PIL import ImageDraw, ImageFont

    image = np.asarray(image)[..., :3]
    width = image.shape[1]
    size = max(12, min(32, width // 32))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the small bitmap font
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, swatch = max(3, size // 3), size
    items = entries or [("no class other than background", None)]
    rows, x, y = [], pad, pad
    for name, color in items:  # place every item, wrapping to a new row when the image is too narrow
        text_width = int(measure.textlength(name, font=font))
        item_width = (swatch + pad if color is not None else 0) + text_width + 2 * pad
        if x > pad and x + item_width > width:
            x, y = pad, y + swatch + pad
        rows.append((x, y, name, color))
        x += item_width
    band = Image.new("RGB", (width, y + swatch + pad), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for x, y, name, color in rows:
        if color is not None:
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(color), outline=(0, 0, 0))
            x += swatch + pad
        if isinstance(font, ImageFont.FreeTypeFont):
            draw.text((x, y + swatch // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
        else:  # bitmap fonts take no anchor
            draw.text((x, y), name, fill=(0, 0, 0), font=font)
    return np.concatenate([image, np.asarray(band)], axis=0)


def index_png_bytes(mask: np.ndarray, palette: Sequence[Sequence[int]], compress_level: int = 3) -> bytes:
    """The one index-mask encoder (predict, serve, demo): labels 0..255 as a palette ('P') PNG, the
    PASCAL VOC format (pixel values are class ids, shown in ``palette``'s colours); the masks of a
    model of more than 256 classes (a palette of more than 256 colours, or labels above 255) as a
    16-bit greyscale PNG of class ids, every image alike. Level 3 compresses label maps nearly as
    well as the default 6, several times faster."""
    mask = np.asarray(mask)
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 65535:
        raise ValueError("index PNGs hold labels 0..65535")
    if mask.dtype == np.uint8 or (len(palette) <= 256 and mask.max(initial=0) <= 255):
        img = Image.fromarray(mask.astype(np.uint8), mode="P")
        img.putpalette(palette_array(palette).reshape(-1).tolist())
    else:
        img = Image.fromarray(mask.astype(np.uint16))
    return encode_image(img, "PNG", compress_level=compress_level)


def save_index_png(mask: np.ndarray, palette: Sequence[Sequence[int]], path: str | os.PathLike) -> None:
    """Write :func:`index_png_bytes` atomically (``fcnseg.files``)."""
    write_bytes(path, index_png_bytes(mask, palette))


def save_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]],
    path: str | os.PathLike,
    quality: int = 90,
    class_names: Sequence[str] | None = None,
) -> None:
    """The overlay as a JPEG (or PNG, by suffix), written atomically; with ``class_names``, a legend
    band below names the classes present."""
    picture = overlay(image, mask, palette)
    if class_names is not None:
        picture = with_legend(picture, legend_entries(mask, class_names, palette))
    save_image(Image.fromarray(picture), path, quality=quality)


def upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge an HxW or HxWxC array ``factor`` times by repeating pixels (nearest neighbour)."""
    return np.repeat(np.repeat(np.asarray(array), factor, axis=0), factor, axis=1) if factor > 1 else np.asarray(array)


def display_factor(shape: Sequence[int], min_size: int = 256) -> int:
    """The integer enlargement that makes an image of ``shape`` (H, W, ...) at least ``min_size`` on its short side."""
    return max(1, -(-min_size // max(1, min(shape[:2]))))


def paint_ignore(rgb: np.ndarray, ignored: np.ndarray, cell: int = 4) -> np.ndarray:
    """``rgb`` with the ``ignored`` pixels (HxW bool) replaced by the IGNORE_CHECKER pattern."""
    yy, xx = np.indices(ignored.shape)
    checker = np.asarray(IGNORE_CHECKER, np.uint8)[(yy // cell + xx // cell) % 2]
    out = rgb.copy()
    out[ignored] = checker[ignored]
    return out


def font(size: int = 16):
    """PIL's built-in scalable font (no font files needed)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def legend(
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    width: int,
    *,
    ignore: bool = False,
    size: int = 16,
    background: Sequence[int] = (255, 255, 255),
) -> np.ndarray:
    """A colour key as an RGB image ``width`` pixels wide: one swatch + name per class, wrapped into rows.

    ``ignore`` adds an "ignore (255)" entry drawn with the IGNORE_CHECKER pattern.
    """
    from PIL import Image, ImageDraw

    f, pad, swatch = font(size), size // 2, size
    entries = [(name, tuple(int(c) for c in colour)) for name, colour in zip(class_names, palette)]
    if ignore:
        entries.append(("ignore (255)", None))
    placed, x, row = [], pad, 0
    for name, colour in entries:
        w = swatch + size // 3 + int(f.getlength(name)) + size
        if x + w > width - pad and x > pad:
            x, row = pad, row + 1
        placed.append((x, row, name, colour))
        x += w
    line = swatch + pad
    img = Image.new("RGB", (width, pad + line * (row + 1)), tuple(background))
    draw = ImageDraw.Draw(img)
    for x, r, name, colour in placed:
        y = pad + r * line
        box = (x, y, x + swatch - 1, y + swatch - 1)
        if colour is None:
            cells = paint_ignore(
                np.zeros((swatch, swatch, 3), np.uint8), np.ones((swatch, swatch), bool), max(2, swatch // 4)
            )
            img.paste(Image.fromarray(cells), (x, y))
        else:
            draw.rectangle(box, fill=colour)
        draw.rectangle(box, outline=(0, 0, 0))
        top, bottom = f.getbbox(name)[1::2]
        draw.text((x + swatch + size // 3, y + (swatch - top - bottom) // 2), name, fill=(0, 0, 0), font=f)
    return np.asarray(img)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB (or gray) uint8 array encoded as PNG, for fcnseg.files.write_bytes."""
    return encode_image(Image.fromarray(np.ascontiguousarray(rgb)), "PNG")
