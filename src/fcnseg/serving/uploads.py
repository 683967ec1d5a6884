"""Getting an image out of a request, within limits: body bytes (raw or multipart), then pixels.

Every refusal is an :class:`ApiError` with an HTTP status and one line saying what to send
instead. Nothing from a request is ever used as a path on the server.
"""

from __future__ import annotations

import asyncio

import numpy as np

from fcnseg.errors import FcnsegError
from fcnseg.images import ImageTooLarge, read_rgb

CLOSE = {"Connection": "close"}  # refused before the body was read: the connection cannot be reused
RAW_TYPES = ("image/", "application/octet-stream")
HOW = (
    "send the image as the body with Content-Type image/* (curl -H 'Content-Type: image/jpeg' "
    "--data-binary @photo.jpg) or as multipart/form-data (curl -F image=@photo.jpg)"
)


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
    raise ApiError(415, f"Content-Type {kind} is not an image; {HOW}", CLOSE)


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"upload exceeds this server's limit of {limit / 2**20:.3g} MB; send a smaller "
        "image (or start the server with a larger --max-upload-mb)",
        CLOSE,
    )


class ClientGone(Exception):
    """The client hung up before its upload had arrived: nobody is left to answer."""


async def read_body(request, limit: int, timeout_s: float, stall_s: float) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (declared or streamed),
    with 408 when it takes longer than ``timeout_s`` in all or no bytes come for ``stall_s``;
    :class:`ClientGone` when the client disconnects. Nothing of the server is held meanwhile."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        left = deadline - loop.time()
        wait = min(stall_s, left)
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(wait, 0.001))
        except StopAsyncIteration:
            break
        except ClientDisconnect:
            raise ClientGone() from None
        except TimeoutError:
            if wait < stall_s:
                raise ApiError(
                    408,
                    f"the upload took longer than {timeout_s:g} s; send it faster or start "
                    "the server with a larger --upload-timeout",
                    CLOSE,
                ) from None
            raise ApiError(
                408,
                f"no bytes of the upload arrived for {stall_s:g} s; send it without pausing "
                "(or start the server with a larger --header-timeout)",
                CLOSE,
            ) from None
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request, limit: int, timeout_s: float, stall_s: float) -> bytes:
    """The uploaded image's bytes, from a raw body or the first file of a multipart form (see
    :func:`read_body` for the limits)."""
    kind = check_content_type(request.headers.get("content-type"))
    body = await read_body(request, limit, timeout_s, stall_s)
    if not body:
        raise ApiError(400, f"the request body is empty; {HOW}")
    if kind == "raw":
        return body
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

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
    """Image bytes -> HxWx3 uint8 RGB through fcnseg.images, the one reader with predict's guards
    (pixel limit from the header before decoding, bombs, truncation); its errors become 4xx answers."""
    try:
        return read_rgb(data, max_pixels, label="upload")
    except ImageTooLarge as exc:
        what = str(exc).split(";")[0]  # the CLI's advice (--max-pixels) is not the client's to take
        raise ApiError(
            413, f"{what}; this server's limit is {max_pixels / 1e6:g} megapixels, send a smaller image"
        ) from None
    except FcnsegError as exc:
        why = str(exc).removeprefix("upload: ").split(";")[0]
        kind = "is truncated or corrupt" if "truncated" in str(exc) else "is not an image fcnseg can read"
        raise ApiError(400, f"the upload {kind} ({why}); send a PNG, JPEG, WebP, BMP, GIF or TIFF file") from None
