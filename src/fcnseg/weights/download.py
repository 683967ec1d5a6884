"""The weights cache: one folder, verified files only, fetched from the publisher or a mirror.

    $FCNSEG_HOME/weights/<file name>      (FCNSEG_HOME defaults to ~/.cache/fcnseg)

``download(entry)`` returns the cached file, fetching it first if needed: the entry's sources are
tried in order (with ``mirror`` / $FCNSEG_MIRROR replacing each source's scheme and host, e.g.
``file:///srv/mirror`` or ``https://intranet/fcn``), the partial file is resumed, the checksum is
checked before the file is renamed into the cache, and a file that does not match is removed.
When every source fails, one line says which URL to fetch by hand and the exact path to put it.

Checksums: torchvision's file names carry the first hex digits of the file's SHA-256, checked the
same way as ``torch.hub.download_url_to_file(hash_prefix=...)``; "md5:" and "sha256:" compare the
whole digest. A file already in the cache is verified once and marked with a ``.verified`` stamp
(its size and mtime), so later loads do not re-hash half a gigabyte.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from pathlib import Path

from fcnseg.errors import FcnsegError
from fcnseg.fetch import ChecksumError, FetchError, fetch, file_hash
from fcnseg.weights.registry import WeightsEntry

log = logging.getLogger(__name__)

HOME_ENV = "FCNSEG_HOME"
MIRROR_ENV = "FCNSEG_MIRROR"
OFFLINE_ENV = "FCNSEG_OFFLINE"


def cache_dir() -> Path:
    """Where downloaded weights live: $FCNSEG_HOME/weights, default ~/.cache/fcnseg/weights."""
    home = os.environ.get(HOME_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fcnseg")
    return Path(home).expanduser() / "weights"


def cached_path(entry: WeightsEntry) -> Path:
    return cache_dir() / entry.filename


def checksum_problem(path: Path, checksum: str | None) -> str | None:
    """None if ``path`` matches ``checksum`` ("sha256-prefix:HEX", "sha256:HEX", "md5:HEX"), else why not."""
    if not checksum:
        return None
    kind, _, want = checksum.partition(":")
    want = want.lower()
    if kind == "sha256-prefix":
        got = file_hash(path, "sha256")
        return None if got.startswith(want) else f"SHA-256 {got[:len(want)]}..., expected {want}..."
    if kind in ("sha256", "md5"):
        got = file_hash(path, kind)
        return None if got == want else f"{kind.upper()} {got}, expected {want}"
    raise ValueError(f"unknown checksum kind {kind!r}")


def mirrored(url: str, mirror: str | None, filename: str) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (which may carry a path prefix);
    a Google Drive link becomes ``MIRROR/<filename>``."""
    if not mirror:
        return url
    parsed = urllib.parse.urlparse(url)
    path = "/" + filename if "drive.google" in parsed.netloc else parsed.path
    return mirror.rstrip("/") + path


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_text(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}\n"


def is_verified(path: Path, checksum: str | None) -> bool:
    """True if ``path`` exists and matches ``checksum`` (hashing it only once per version of the file)."""
    if not path.is_file():
        return False
    stamp = _stamp(path)
    if stamp.is_file() and stamp.read_text() == _stamp_text(path):
        return True
    problem = checksum_problem(path, checksum)
    if problem:
        path.unlink()
        stamp.unlink(missing_ok=True)
        log.warning("removed %s from the cache: checksum mismatch (%s); it will be downloaded again",
                    path, problem)
        return False
    from fcnseg.files import write_text

    write_text(stamp, _stamp_text(path))
    return True


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an advisory lock on ``.locks/<name>.lock`` beside ``path`` (POSIX), so that concurrent processes -- e.g. the ranks
    of a torchrun job -- download a file once: the others wait and then find it in the cache."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    locks = path.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / (path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download(entry: WeightsEntry, *, mirror: str | None = None, progress: bool | None = None,
             offline: bool | None = None) -> Path:
    """The verified local file of ``entry``, downloaded into the cache if it is not there yet."""
    dest = cached_path(entry)
    if is_verified(dest, entry.checksum):
        return dest
    try:
        lock = _exclusive(dest)
        lock.__enter__()
    except OSError as exc:
        from fcnseg.files import write_error

        raise write_error(dest, exc) from None
    try:
        return _download(entry, dest, mirror, progress, offline)
    finally:
        lock.__exit__(None, None, None)


def _download(entry: WeightsEntry, dest: Path, mirror: str | None, progress: bool | None,
              offline: bool | None) -> Path:
    if is_verified(dest, entry.checksum):  # another process fetched it while we waited
        return dest
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    offline = offline if offline is not None else os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    first = mirrored(entry.urls[0], mirror, entry.filename)
    by_hand = f"fetch {first} by hand and put it at {dest}"
    if offline:
        raise FcnsegError(f"weights {entry.name!r} are not cached and {OFFLINE_ENV} is set; {by_hand}")
    failures = []
    for url in dict.fromkeys(mirrored(u, mirror, entry.filename) for u in entry.urls):
        log.info("downloading %s from %s", entry.name, url)
        try:
            fetch(url, dest, verify=lambda part: checksum_problem(part, entry.checksum), progress=progress)
        except FetchError as exc:
            failures.append(str(exc))
            continue
        except ChecksumError as exc:
            raise FcnsegError(f"{exc}; the source {url} serves a different file -- check the mirror, "
                              f"or {by_hand}") from None
        is_verified(dest, None)  # stamp it
        return dest
    reason = failures[-1].removeprefix("cannot download ") if failures else "no source"
    part = dest.with_name(dest.name + ".part")
    kept = f" ({part} is kept; the next run resumes it)" if part.is_file() else ""
    raise FcnsegError(f"cannot download weights {entry.name!r} ({reason}){kept}; {by_hand}, "
                      f"or set {MIRROR_ENV}")
