"""The one place fcnseg opens image files and writes them: every guard lives here.

``open_image(path)`` is used by the dataset readers (``fcnseg.data.io``) and by inference
(``fcnseg.inference.image_io``) alike, so training, ``data check``, ``evaluate`` and ``predict`` refuse
the same files with the same one-line messages:

* a missing, empty or unreadable file; a file that is not an image;
* a decompression bomb: the header's width x height is checked against ``max_pixels`` *before*
  decoding, and Pillow's own bomb error is turned into the same message;
* a truncated or corrupt file (decoded at once, so it fails here and not later).

``save_image`` encodes in memory and writes through ``fcnseg.files`` (temp file + rename), so a full
disk leaves no half-written PNG or JPEG behind.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fcnseg.errors import FcnsegError
from fcnseg.files import read_error, write_bytes

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels (a 4000x3000 photo is 12)


def too_big_message(path: str | os.PathLike, width: int, height: int, max_pixels: int) -> str:
    return (f"{path}: {width}x{height} = {width * height / 1e6:.0f} megapixels exceeds the limit of "
            f"{max_pixels / 1e6:.0f} (decompression bomb guard); raise --max-pixels only if you trust the file")


def check_pixels(path: str | os.PathLike, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(too_big_message(path, width, height, max_pixels))


def open_image(path: str | os.PathLike, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
               decode: bool = True) -> Image.Image:
    """Open an image file with every guard (see the module docstring); decoded unless ``decode=False``
    (then only the header was read: size and mode are known, the pixels are not)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FcnsegError(f"{path}: {what} not found; check the path (`fcnseg data check` lists all "
                          "problems of a dataset)") from None
    except OSError as exc:
        raise read_error(path, exc) from None
    if not path.is_file():
        raise FcnsegError(f"{path}: {what} is not a file; check the path")
    if size == 0:
        raise FcnsegError(f"{path}: {what} file is empty; re-copy or remove it")
    return _guarded_open(path, path, what, max_pixels, decode)


class ImageTooLarge(FcnsegError):
    """An image over the pixel limit (a decompression bomb, or just too big): servers answer 413."""


def open_image_bytes(data: bytes, label: str = "upload", what: str = "image",
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
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
            raise ImageTooLarge(f"{label}: {what} is too large to decode safely (decompression bomb guard); "
                                "raise --max-pixels only if you trust the file") from None
        except UnidentifiedImageError:
            raise FcnsegError(f"{label}: cannot read {what} (not a format Pillow recognises); convert it to PNG or JPEG, "
                              "or remove it") from None
        except MemoryError:
            raise FcnsegError(f"{label}: not enough memory to decode this {what}; shrink it or remove it") from None
        except PermissionError as exc:
            raise read_error(label, exc) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise FcnsegError(f"{label}: cannot read {what} ({reason}); the file is truncated or corrupt, "
                              "re-copy or remove it") from None


def image_size(path: str | os.PathLike, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone, with the same guards as :func:`open_image`."""
    with open_image(path, what, max_pixels, decode=False) as img:
        return img.size


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
