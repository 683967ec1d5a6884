"""Getting an image out of a request, within limits: body bytes (raw or multipart), then pixels.

Every refusal is an :class:`ApiError` with an HTTP status and one line saying what to send
instead. Nothing from a request is ever used as a path on the server.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from fcnseg.errors import FcnsegError
from fcnseg.inference.image_io import pil_to_rgb

RAW_TYPES = ("image/", "application/octet-stream")
HOW = "send the image as the body with Content-Type image/* (curl -H 'Content-Type: image/jpeg' " \
      "--data-binary @photo.jpg) or as multipart/form-data (curl -F image=@photo.jpg)"


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    """'raw' or 'multipart'; anything else is refused with 415."""
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        return "multipart"
    if not kind or kind.startswith(RAW_TYPES):
        return "raw"
    raise ApiError(415, f"Content-Type {kind} is not an image; {HOW}")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"upload exceeds this server's limit of {limit / 2**20:.3g} MB; send a smaller "
                         "image (or start the server with a larger --max-upload-mb)")


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request, limit: int) -> bytes:
    """The uploaded image's bytes, from a raw body or the first file of a multipart form."""
    kind = check_content_type(request.headers.get("content-type"))
    body = await read_body(request, limit)
    if not body:
        raise ApiError(400, f"the request body is empty; {HOW}")
    if kind == "raw":
        return body
    from starlette.requests import Request
    from starlette.datastructures import UploadFile

    async def replay() -> dict:  # the body is already read (within the limit); parse it from memory
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as exc:  # starlette raises its own HTTPException/MultiPartException kinds
        reason = str(getattr(exc, "detail", "") or exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ApiError(400, f"malformed multipart form ({reason}); {HOW}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise ApiError(400, f"the multipart form holds no file; {HOW}")
        data = await files[0].read()
    finally:
        await form.close()
    if not data:
        raise ApiError(400, f"the uploaded file is empty; {HOW}")
    return data


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Image bytes -> HxWx3 uint8 RGB, with predict's checks: the header's size is checked against
    ``max_pixels`` before anything is decoded (decompression bombs), EXIF orientation applied."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ApiError(413, f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, "
                                        f"over this server's limit of {max_pixels / 1e6:g} (decompression "
                                        "bomb guard); send a smaller image")
                img.load()
                return pil_to_rgb(img)
        except Image.DecompressionBombError:
            raise ApiError(413, "image is too large to decode safely (decompression bomb guard); "
                                "send a smaller image") from None
        except UnidentifiedImageError:
            raise ApiError(400, "the upload is not an image Pillow can read; send PNG, JPEG, WebP, "
                                "BMP, GIF or TIFF") from None
        except MemoryError:
            raise ApiError(413, "not enough memory to decode this image; send a smaller one") from None
        except (OSError, SyntaxError, ValueError, EOFError, FcnsegError) as exc:
            reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise ApiError(400, f"cannot decode the image ({reason}); the upload is truncated or "
                                "corrupt") from None
