"""Fetching one file over HTTP(S) or file://: resumable, checked, renamed into place atomically.

``fetch(url, dest, verify=...)`` downloads into ``dest.part`` (resuming what an earlier run left
there: an HTTP Range request, or a byte offset for file:// URLs) and renames the part file to
``dest`` only when all three hold, so ``dest`` is never a half-written or unchecked file:

1. the transfer is complete: the bytes in the part file equal the size the server announced
   (Content-Length, or the file's size for file://) or the caller's ``expected_size``. Anything
   shorter -- a connection cut half-way, a body shorter than its Content-Length -- raises
   IncompleteError ("N of M bytes received") and keeps the part file, checksum or not, for the
   next run to resume;
2. the content is the expected kind: an HTML or text page answered with 200 (a login, quota or
   error page) is refused before a byte of it is kept, and ``expect(head)`` lets the caller
   refuse other kinds from the first bytes (a tar archive, a zip, a .caffemodel);
3. ``verify(part)`` -- a checksum, or a full parse of the format -- finds nothing wrong; a
   complete file that fails it is removed (resuming it could not make it right).

A server that ignores the Range header (200 with the whole file) restarts the part file from
byte 0. Google Drive links (``drive.google.com/uc?id=``) go through Drive's "cannot scan this
file for viruses" confirmation page first.

Built on the standard library's urllib (with a cookie jar for Drive) rather than requests: no
extra dependency, and Range, redirects and file:// are all it needs. Used by ``fcnseg.data``
(dataset archives) and ``fcnseg.weights`` (weight files).
"""

from __future__ import annotations

import hashlib
import html
import http.client
import http.cookiejar
import io
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fcnseg.errors import FcnsegError
from fcnseg.files import write_error

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60
SNIFF_BYTES = 1024  # enough for every magic number looked at (a tar header's "ustar" is at 257)


class FetchError(FcnsegError):
    """The source could not be read (network down, host gone, 404, ...); a part file is kept."""


class IncompleteError(FetchError):
    """The transfer ended before the announced size; the part file is kept for a resume."""


class WrongContentError(FetchError):
    """The source answered with something that is not the file (an HTML page, another format);
    nothing of it was kept."""


class ChecksumError(FcnsegError):
    """The complete downloaded file failed its check (checksum or parse); it has been removed."""


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
        return "https://drive.google.com/uc?export=download&" + urllib.parse.urlencode(
            {"confirm": token.group(1), "id": file_id}
        )
    return None


def open_url(
    url: str, offset: int = 0, opener: urllib.request.OpenerDirector | None = None
) -> tuple[BinaryIO, int | None, int]:
    """(stream, total size or None, offset actually resumed from). A server that ignores the Range
    header, or a source shorter than the partial file, restarts from 0."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        size = os.path.getsize(path)
        offset = offset if offset <= size else 0
        stream = open(path, "rb")  # noqa: SIM115  (returned to the caller, which closes it)
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
        if exc.code == 416 and offset:  # the partial file is already complete (or bigger)
            size = _content_range(exc.headers.get("Content-Range", ""))[1]
            if size == offset:  # complete: nothing more to read, the checks come next
                return io.BytesIO(b""), size, offset
            return open_url(url, 0, opener)  # bigger, or unknown: start over
        raise
    if file_id is not None and "text/html" in response.headers.get("Content-Type", ""):
        page = response.read(2_000_000).decode("utf-8", "replace")
        response.close()
        confirm = _drive_confirm_url(page, file_id)
        if confirm is None:
            raise WrongContentError(
                f"{url}: Google Drive answered with a page instead of the file "
                "(quota exceeded, or the file is gone); nothing was kept"
            )
        response = opener.open(urllib.request.Request(confirm, headers=headers), timeout=TIMEOUT_S)
        if "text/html" in response.headers.get("Content-Type", ""):
            response.close()
            raise WrongContentError(f"{url}: Google Drive refused the download after confirmation; nothing was kept")
    length = response.headers.get("Content-Length")
    if offset and getattr(response, "status", 200) == 206:
        start, size = _content_range(response.headers.get("Content-Range", ""))
        if start is not None and start != offset:
            response.close()
            raise FetchError(
                f"cannot download {url} (asked to resume at byte {offset}, the server answered from byte {start})"
            )
        if size is not None:
            return response, size, offset
    elif offset:  # 200: the server ignored the Range header and sends the whole file
        offset = 0
    return response, (offset + int(length)) if length else None, offset


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(first byte, full size) of a Content-Range header ("bytes 100-999/1000", "bytes */1000")."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, size = match.groups()
    return (int(start) if start else None), (int(size) if size and size != "*" else None)


def show_progress(progress: bool | None) -> bool:
    """None = a bar only when stderr is a terminal (never in logs or CI)."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def _open_part(part: Path, offset: int) -> BinaryIO:
    try:
        return open(part, "ab" if offset else "wb", buffering=0)
    except OSError as exc:
        raise write_error(part, exc) from None


_PAGE_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<!--", b"<?xml", b"<script", b"<title")


def page_problem(head: bytes, content_type: str = "", who: str = "the server answered with") -> str | None:
    """Why ``head`` (the first bytes of an answer) is a web page rather than a file, else None."""
    kind = content_type.split(";")[0].strip().lower()
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if kind in ("text/html", "application/xhtml+xml") or text.startswith(_PAGE_STARTS):
        return f"{who} an HTML page (a login or error page?), not the file"
    if (kind.startswith("text/") or kind == "application/json") and _looks_like_text(head):
        return f"{who} text ({kind}), not the file"  # (a binary body under a wrong text type is kept)
    return None


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # only a character cut at the end of the sample
    return True


def describe_size(n: int) -> str:
    return f"{n} bytes" if n < 10_000 else f"{n} bytes ({n / 2**20:.1f} MiB)"


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    verify: Callable[[Path], str | None] | None = None,
    expect: Callable[[bytes], str | None] | None = None,
    expected_size: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed if present); returns ``dest``.

    ``expect(head)`` gets the first bytes of a fresh transfer and returns None when they are the
    expected kind, else what they are ("not a zip archive"): WrongContentError, nothing kept.
    ``expected_size`` (bytes) is the size to reach when the server announces none (or a check of
    the one it announces). ``verify(part_path)`` returns None when the complete file is right,
    else a reason ("MD5 ab12..., expected cd34..."): the part file is then removed and
    ChecksumError raised. A transfer that ends short or fails raises FetchError (IncompleteError
    for a short one) and keeps the part file for the next attempt to resume.
    """
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    asked = part.stat().st_size if part.is_file() else 0
    received = offset = 0
    total: int | None = None
    try:
        stream, total, offset = open_url(url, asked)
        if asked and not offset:
            log.info(
                "%s: the source cannot resume (it sent the whole file); starting %s again from byte 0", url, part.name
            )
        elif offset:
            log.info("resuming %s at byte %d", part.name, offset)
        if expected_size is not None and total is not None and total != expected_size:
            stream.close()
            raise WrongContentError(
                f"{url}: the server announces {describe_size(total)}, expected "
                f"{describe_size(expected_size)}: not the published file; nothing was kept"
            )
        total = expected_size if total is None else total
        received = offset
        with stream:
            head = b""
            if not offset:  # look at the first bytes before keeping any of them
                while len(head) < SNIFF_BYTES and (more := stream.read(SNIFF_BYTES - len(head))):
                    head += more
                if hasattr(stream, "headers"):
                    problem = page_problem(head, stream.headers.get("Content-Type", ""))
                else:
                    problem = page_problem(head, who=f"{url} is")
                problem = problem or (expect(head) if expect and head else None)
                if problem:
                    raise WrongContentError(f"{url}: {problem}; nothing was kept")
            # unbuffered: a write that fails (full disk) fails at once, as itself, not as a network error
            with (
                _open_part(part, offset) as out,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not show_progress(progress),
                    file=sys.stderr,
                ) as bar,
            ):
                chunk = head
                while chunk or (chunk := stream.read(CHUNK)):
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise write_error(part, exc) from None  # (the part file is kept: a rerun resumes it)
                    received += len(chunk)
                    bar.update(len(chunk))
                    chunk = b""
    except FcnsegError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if received or isinstance(exc, http.client.IncompleteRead):
            size = f" of {total}" if total else ""
            raise IncompleteError(
                f"cannot download {url}: the transfer broke off ({reason}) after "
                f"{received}{size} bytes received; {part} is kept -- run the same "
                "command again to resume"
            ) from None
        raise FetchError(f"cannot download {url} ({reason})") from None
    if total is not None and received < total:
        raise IncompleteError(
            f"cannot download {url}: {received} of {total} bytes received; {part} is "
            "kept -- run the same command again to resume"
        )
    if total is not None and received > total:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest.name} from {url}: {received} bytes received where {total} were "
            "announced: not the expected file; it was removed"
        )
    if verify is not None:
        problem = verify(part)
        if problem:
            part.unlink(missing_ok=True)
            whole = (
                f"the complete file ({describe_size(received)})"
                if total is not None
                else f"the {describe_size(received)} received (the server announced no size: a cut transfer "
                "or a different file)"
            )
            raise ChecksumError(f"{dest.name} from {url}: {whole} failed its check ({problem}); it was removed")
    os.replace(part, dest)
    return dest
