"""Fetching one file over HTTP(S) or file://: resumable, checksummed, renamed into place atomically.

``fetch(url, dest, verify=...)`` downloads into ``dest.part`` (resuming what an earlier run left
there: an HTTP Range request, or a byte offset for file:// URLs), calls ``verify(part)`` and only
then renames the part file to ``dest``, so ``dest`` is never a half-written or unverified file.
A verification failure removes the part file. Google Drive links (``drive.google.com/uc?id=``)
go through Drive's "cannot scan this file for viruses" confirmation page first.

Built on the standard library's urllib (with a cookie jar for Drive) rather than requests: no
extra dependency, and Range, redirects and file:// are all it needs. Used by ``fcnseg.data``
(dataset archives) and ``fcnseg.weights`` (weight files).
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import html
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable

from fcnseg.errors import FcnsegError
from fcnseg.files import write_error

CHUNK = 1 << 20
TIMEOUT_S = 60


class FetchError(FcnsegError):
    """The source could not be read (network down, host gone, 404, ...)."""


class ChecksumError(FcnsegError):
    """The downloaded file is not the expected one; it has been removed."""


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    return file_hash(path, "md5")


def google_drive_id(url: str) -> str | None:
    """The file id of a Google Drive download link (uc?id=..., open?id=..., file/d/ID/...), else None."""
    parsed = urllib.parse.urlparse(url)
    if not parsed.netloc.endswith(("drive.google.com", "drive.usercontent.google.com")):
        return None
    query = urllib.parse.parse_qs(parsed.query)
    if "id" in query:
        return query["id"][0]
    match = re.search(r"/file/d/([^/]+)", parsed.path)
    return match.group(1) if match else None


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _drive_confirm_url(page: str, file_id: str) -> str | None:
    """The download address on Drive's virus-scan warning page (a form, or an older confirm= link)."""
    form = re.search(r'<form[^>]+id="download-form"[^>]+action="([^"]+)"', page)
    if form:
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
        fields.setdefault("id", file_id)
        return html.unescape(form.group(1)) + "?" + urllib.parse.urlencode(fields)
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if token:
        return ("https://drive.google.com/uc?export=download&"
                + urllib.parse.urlencode({"confirm": token.group(1), "id": file_id}))
    return None


def open_url(url: str, offset: int = 0, opener: urllib.request.OpenerDirector | None = None
             ) -> tuple[BinaryIO, int | None, int]:
    """(stream, total size or None, offset actually resumed from). A server that ignores the Range
    header, or a source shorter than the partial file, restarts from 0."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        size = os.path.getsize(path)
        offset = offset if offset <= size else 0
        stream = open(path, "rb")
        stream.seek(offset)
        return stream, size, offset
    opener = opener or _opener()
    file_id = google_drive_id(url)
    if file_id is not None:
        url = "https://drive.google.com/uc?" + urllib.parse.urlencode({"export": "download", "id": file_id})
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already complete (or bigger): start over
            return open_url(url, 0, opener)
        raise
    if file_id is not None and "text/html" in response.headers.get("Content-Type", ""):
        page = response.read(2_000_000).decode("utf-8", "replace")
        response.close()
        confirm = _drive_confirm_url(page, file_id)
        if confirm is None:
            raise urllib.error.URLError("Google Drive answered with a page instead of the file "
                                        "(quota exceeded, or the file is gone)")
        response = opener.open(urllib.request.Request(confirm, headers=headers), timeout=TIMEOUT_S)
        if "text/html" in response.headers.get("Content-Type", ""):
            response.close()
            raise urllib.error.URLError("Google Drive refused the download after confirmation")
    if offset and getattr(response, "status", 200) != 206:
        offset = 0
    length = response.headers.get("Content-Length")
    return response, (offset + int(length)) if length else None, offset


def show_progress(progress: bool | None) -> bool:
    """None = a bar only when stderr is a terminal (never in logs or CI)."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def _open_part(part: Path, offset: int) -> BinaryIO:
    try:
        return open(part, "ab" if offset else "wb", buffering=0)
    except OSError as exc:
        raise write_error(part, exc) from None


def fetch(url: str, dest: str | os.PathLike, *, verify: Callable[[Path], str | None] | None = None,
          progress: bool | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed if present); returns ``dest``.

    ``verify(part_path)`` returns None when the file is right, else a reason ("MD5 ab12..., expected
    cd34..."): the part file is then removed and ChecksumError raised. A failed transfer raises
    FetchError and keeps the part file for the next attempt to resume.
    """
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        stream, total, offset = open_url(url, offset)
        # unbuffered: a write that fails (full disk) fails at once, as itself, not as a network error
        with stream, _open_part(part, offset) as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, disable=not show_progress(progress), file=sys.stderr,
        ) as bar:
            while chunk := stream.read(CHUNK):
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise write_error(part, exc) from None  # (the part file is kept: a rerun resumes it)
                bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download {url} ({reason})") from None
    if verify is not None:
        problem = verify(part)
        if problem:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{dest}: checksum mismatch ({problem}); the download was removed")
    os.replace(part, dest)
    return dest
