"""The one place fcnseg turns files into pixels and writes images: every guard and every rule lives here.

``read_rgb(source)`` (a path, bytes or a PIL image -> HxWx3 uint8 RGB) is used by the dataset readers
(``fcnseg.data.io``), ``data check``, training, inference (``Segmenter``, ``predict``) and the server's
upload decoding alike, so they all see the same pixels. Its rules:

* EXIF orientation is applied (phone photos come out upright everywhere, masks too);
* 16-bit greyscale (``I;16``, ``I``) keeps its high byte (value >> 8: 65535 -> 255, 256 -> 1);
  Pillow reads 16-bit colour PNGs the same way (high byte), so every 16-bit file follows one rule;
  32-bit float (``F``) in [0, 1] is scaled by 255, other floats are clipped to 0..255;
* palette (``P``), greyscale, bilevel, CMYK, YCbCr, LAB and HSV are converted to RGB by Pillow;
* alpha is dropped, never composited (``RGBA``, ``LA``, ``PA`` and palette transparency alike): the
  colour under a transparent pixel is kept as stored.

``read_label(path)`` reads masks: index masks (palette 'P', greyscale 'L', bilevel, 16/32-bit greyscale
with every value in 0..255) give HxW uint8 class ids; the indices of a 'P' mask are its labels, unless
the caller decodes by colour (``by_colour=True``: a 'P' mask becomes its palette colours, like an RGB
mask). RGB/RGBA masks give HxWx3 colours (decoded through a colour table by the dataset).

Every reader refuses, with one line naming the file: a missing file, a folder or other non-file (a FIFO
is never opened), an empty file, a file that is not an image, a decompression bomb (the header's width
x height is checked against ``max_pixels`` *before* decoding) and a truncated or corrupt file (decoded
at once, so it fails here and not later).

``read_depth(path)`` reads a depth map (NYUDv2's 16-bit PNGs in millimetres): one greyscale channel,
every bit kept (HxW float32, no high-byte rule), EXIF orientation applied like the others.

``save_image`` encodes in memory and writes through ``fcnseg.files`` (temp file + rename), so a full
disk leaves no half-written PNG or JPEG behind.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fcnseg.errors import FcnsegError
from fcnseg.files import check_input_file, read_error, write_bytes

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels (a 4000x3000 photo is 12)
# The file names fcnseg reads as images or masks, everywhere (folders of photos, folder datasets).
# GIF is read like any other file (its first frame); a multi-frame file's other frames are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")
_EXIF_ORIENTATION = 0x0112
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 or 270 degrees: width and height trade places


def too_big_message(path: str | os.PathLike, width: int, height: int, max_pixels: int) -> str:
    return (
        f"{path}: {width}x{height} = {width * height / 1e6:.0f} megapixels exceeds the limit of "
        f"{max_pixels / 1e6:.0f} (decompression bomb guard); raise --max-pixels only if you trust the file"
    )


def check_pixels(path: str | os.PathLike, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(too_big_message(path, width, height, max_pixels))


def open_image(
    path: str | os.PathLike, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True
) -> Image.Image:
    """Open an image file with every guard (see the module docstring); decoded unless ``decode=False``
    (then only the header was read: size and mode are known, the pixels are not)."""
    path = Path(path)
    size = check_input_file(path, what).st_size
    if size == 0:
        raise FcnsegError(f"{path}: {what} file is empty; re-copy or remove it")
    return _guarded_open(path, path, what, max_pixels, decode)


class ImageTooLarge(FcnsegError):
    """An image over the pixel limit (a decompression bomb, or just too big): servers answer 413."""


def open_image_bytes(
    data: bytes, label: str = "upload", what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """The same guards for an image held in memory (an HTTP upload); ``label`` names it in messages."""
    if not data:
        raise FcnsegError(f"{label}: {what} is empty; send an image file")
    return _guarded_open(io.BytesIO(data), label, what, max_pixels, decode=True)


def _guarded_open(source, label, what: str, max_pixels: int, decode: bool) -> Image.Image:
    """Image.open with the pixel limit checked from the header before decoding, and every failure
    turned into one FcnsegError naming ``label``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies instead
        try:
            img = Image.open(source)
            if img.width * img.height > max_pixels:
                raise ImageTooLarge(too_big_message(label, img.width, img.height, max_pixels))
            if decode:
                img.load()
            return img
        except FcnsegError:
            raise
        except Image.DecompressionBombError:
            raise ImageTooLarge(
                f"{label}: {what} is too large to decode safely (decompression bomb guard); "
                "raise --max-pixels only if you trust the file"
            ) from None
        except UnidentifiedImageError:
            raise FcnsegError(
                f"{label}: cannot read {what} (not a format Pillow recognises); convert it to PNG or JPEG, or remove it"
            ) from None
        except MemoryError:
            raise FcnsegError(f"{label}: not enough memory to decode this {what}; shrink it or remove it") from None
        except PermissionError as exc:
            raise read_error(label, exc) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise FcnsegError(
                f"{label}: cannot read {what} ({reason}); the file is truncated or corrupt, re-copy or remove it"
            ) from None


def image_size(path: str | os.PathLike, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as the readers return the pixels (EXIF orientation applied), from the header
    alone, with the same guards as :func:`open_image`."""
    with open_image(path, what, max_pixels, decode=False) as img:
        width, height = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # noqa: BLE001 - a damaged EXIF block: the decoder will say more
            orientation = None
        return (height, width) if orientation in _SWAPPED_ORIENTATIONS else (width, height)


# ---------------------------------------------------------------------------------------------
# pixels: the rules of the module docstring, in one place


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8 by the module's rules: uint16 (and other integers above 255) keep
    their high byte (>> 8), other integers are taken as 0..255, bool as 0/255, floats in [0, 1] are
    scaled by 255 and other floats clipped to 0..255."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype == np.uint16 or array.max(initial=0) > 255:
            return (np.clip(array, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return np.clip(array, 0, 255).astype(np.uint8)
    array = np.nan_to_num(array.astype(np.float32))
    scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
    return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)


def to_rgb(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 array (any numeric dtype) -> HxWx3 uint8 (alpha dropped)."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise FcnsegError(f"image array has shape {array.shape}; pass HxW, HxWx3 or HxWx4")
    array = to_uint8(array[..., :3])
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()  # PIL hands out read-only views


_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A decoded PIL image in any mode -> HxWx3 uint8 RGB by the module's rules (EXIF, depth, alpha)."""
    img = upright(img)
    if img.mode in _DEEP_MODES:
        return to_rgb(np.asarray(img))  # 16/32-bit greyscale: high byte, not clipped to white
    if img.mode != "RGB":
        img = img.convert("RGB")  # P, L, 1, LA, PA, RGBA, CMYK, YCbCr, ...: alpha dropped
    return to_rgb(np.asarray(img))


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (the same image when it says nothing)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is no reason to refuse the pixels
        return img


def read_rgb(
    source: str | os.PathLike | bytes | Image.Image,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    label: str = "upload",
    what: str = "image",
) -> np.ndarray:
    """A file path, encoded bytes (named ``label`` in messages) or a PIL image -> HxWx3 uint8 RGB:
    the one image reader, with every guard and rule of the module docstring."""
    if isinstance(source, Image.Image):
        check_pixels(f"<PIL {what}>", source.width, source.height, max_pixels)
        return pil_to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        with open_image_bytes(bytes(source), label, what, max_pixels) as img:
            return pil_to_rgb(img)
    with open_image(source, what, max_pixels) as img:
        return pil_to_rgb(img)


_INDEX_MODES = ("P", "L", "1", "LA", "PA", "I", "I;16", "I;16B", "I;16L", "I;16N")


def read_label(path: str | os.PathLike, by_colour: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file -> HxW uint8 class ids (index masks) or HxWx3 uint8 colours (colour masks).

    Index masks: 'P' (its indices are the labels), 'L', bilevel '1' (0/255), 'LA'/'PA' (alpha
    dropped) and 16/32-bit greyscale whose values all lie in 0..255 (others are refused, naming the
    range found). ``by_colour=True`` (a colour table will decode the mask) turns a 'P' mask into its
    palette colours instead, so it is decoded by the colours it shows, like an RGB mask. RGB, RGBA
    and other colour modes give colours. EXIF orientation is applied, as for images."""
    with open_image(path, "mask", max_pixels) as img:
        img = upright(img)
        if img.mode in ("P", "PA") and by_colour:
            return np.ascontiguousarray(np.asarray(img.convert("RGB")))
        if img.mode not in _INDEX_MODES:
            return np.ascontiguousarray(np.asarray(img.convert("RGB")))
        if img.mode == "1":
            img = img.convert("L")  # 0/255, like a binary mask saved as greyscale
        elif img.mode in ("LA", "PA"):
            img = img.getchannel(0)
        labels = np.asarray(img)
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise FcnsegError(
                f'{path}: mask values must be 0..255, class ids with 255 for "ignore" (found '
                f"{labels.min()}..{labels.max()}); save masks as 8-bit index PNGs"
            )
        labels = labels.astype(np.uint8)
    return np.ascontiguousarray(labels)


_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "L")


def read_depth(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A single-channel depth image -> HxW float32 with every bit of the stored values (16-bit PNGs
    keep their full range; the caller knows the unit). Colour images are refused, naming the file."""
    with open_image(path, "depth map", max_pixels) as img:
        img = upright(img)
        if img.mode not in _DEPTH_MODES:
            raise FcnsegError(
                f"{path}: a depth map must be one greyscale channel (16-bit PNG), this is {img.mode}; "
                "use the dataset's depth files, not a colourised preview"
            )
        return np.asarray(img, dtype=np.float32).copy()


def read_instance_ids(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An instance mask (0 = background, one id per object; 8-, 16- or 32-bit greyscale, or palette
    indices) -> HxW int32 ids. Colour images are refused. EXIF orientation is applied, as for images."""
    with open_image(path, "instance mask", max_pixels) as img:
        img = upright(img)
        if img.mode not in _INDEX_MODES:
            raise FcnsegError(
                f"{path}: instance mask is a colour image; save instance ids as a greyscale (8- or 16-bit) "
                "PNG or TIFF, 0 = background, one value per object"
            )
        if img.mode in ("LA", "PA"):
            img = img.getchannel(0)
        ids = np.asarray(img).astype(np.int32)
    if ids.size and ids.min() < 0:
        raise FcnsegError(f"{path}: instance ids must be 0 (background) or positive, found {ids.min()}")
    return np.ascontiguousarray(ids)


def encode_image(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def save_image(img: Image.Image, path: str | os.PathLike, fmt: str | None = None, **options) -> Path:
    """Encode ``img`` (format from ``fmt`` or the suffix) and write it atomically."""
    path = Path(path)
    fmt = fmt or Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise FcnsegError(f"cannot tell the image format of {path}; use a .png or .jpg name")
    return write_bytes(path, encode_image(img, fmt, **options))
