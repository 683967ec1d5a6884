"""The weights cache: one folder, verified files only, fetched from the publisher or a mirror.

    $FCNSEG_HOME/weights/<file name>      (FCNSEG_HOME defaults to ~/.cache/fcnseg)

``download(entry)`` returns the cached file, fetching it first if needed: the entry's sources are
tried in order (with ``mirror`` / $FCNSEG_MIRROR replacing each source's scheme and host, e.g.
``file:///srv/mirror`` or ``https://intranet/fcn``), a partial file is resumed, and a file enters
the cache only when ``fcnseg.fetch`` found the transfer complete and the content of the right
kind (never an HTML page), and the entry's check passed:

* its checksum, where the publisher gives one: torchvision's file names carry the first hex
  digits of the file's SHA-256 (checked as ``torch.hub.download_url_to_file(hash_prefix=...)``
  does); "md5:" and "sha256:" compare the whole digest;
* otherwise a full parse of its format: every layer of a .caffemodel read to the end (the FCN
  authors publish no checksum), or a weights_only load of a PyTorch file.

The ``.verified`` stamp beside a cached file records its size and mtime and which check passed;
it is written only after that check, so later loads do not re-hash half a gigabyte, and a file
changed since (truncated, replaced) is checked again -- and removed from the cache if it fails.
``download(entry, force=True)`` (``fcnseg weights download NAME --force``) fetches the file again
and replaces the cached one atomically, only once the new one has passed. When every source
fails, one line says what happened with each and which URL to fetch by hand to which path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from fcnseg.errors import FcnsegError
from fcnseg.fetch import ChecksumError, FetchError, describe_size, fetch, file_hash
from fcnseg.files import HOME_ENV, fcnseg_home  # noqa: F401 - HOME_ENV: its historical home
from fcnseg.weights.registry import REGISTRY, WeightsEntry

log = logging.getLogger(__name__)

MIRROR_ENV = "FCNSEG_MIRROR"
OFFLINE_ENV = "FCNSEG_OFFLINE"


def cache_dir() -> Path:
    """Where downloaded weights live: $FCNSEG_HOME/weights, default ~/.cache/fcnseg/weights."""
    return fcnseg_home() / "weights"


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
        return None if got.startswith(want) else f"SHA-256 {got[: len(want)]}..., expected {want}..."
    if kind in ("sha256", "md5"):
        got = file_hash(path, kind)
        return None if got == want else f"{kind.upper()} {got}, expected {want}"
    raise ValueError(f"unknown checksum kind {kind!r}")


def _checksum_name(checksum: str) -> str:
    kind, _, want = checksum.partition(":")
    return {"sha256-prefix": f"SHA-256 prefix {want}", "sha256": "SHA-256", "md5": "MD5"}.get(kind, kind) + " matches"


_TORCH_FORMATS = ("torchvision", "torchvision-seg", "pytorch-fcn")


def _parse_problem(entry: WeightsEntry, path: Path) -> str | None:
    """A full parse of ``path`` in ``entry``'s format: None if it reads to the end, else why not."""
    try:
        if entry.format == "caffe":
            from fcnseg.weights.caffe import read_caffemodel

            read_caffemodel(path)
        else:
            from fcnseg.files import safe_torch_load

            safe_torch_load(path)
    except FcnsegError as exc:  # its first clause says what is wrong; its advice is for another context
        return str(exc).split("; ")[0].replace(str(path), path.name)
    return None


def check(entry: WeightsEntry) -> tuple[Callable[[Path], str | None], str]:
    """(check, what it is): the test a file must pass to enter the cache as ``entry``'s file.
    The publisher's checksum where there is one, else a full parse of the file's format."""
    if entry.checksum:
        return (lambda path: checksum_problem(path, entry.checksum)), _checksum_name(entry.checksum)
    what = (
        "every Caffe layer read to the end"
        if entry.format == "caffe"
        else "a full weights_only load (no checksum published)"
    )
    return (lambda path: _parse_problem(entry, path)), what


def expected_kind(entry: WeightsEntry) -> Callable[[bytes], str | None] | None:
    """A look at a download's first bytes: is it the kind of file ``entry`` is (before any is kept)?"""
    if entry.format == "caffe":
        from fcnseg.weights.caffe import is_caffemodel_head

        return lambda head: None if is_caffemodel_head(head) else "not a .caffemodel (wrong first bytes)"
    if entry.format in _TORCH_FORMATS:  # torch.save writes a zip archive, or a pickle in older files
        return lambda head: (
            None
            if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"
            else "not a PyTorch file (neither a zip archive nor a pickle)"
        )
    return None


def replace_hint(path: str | os.PathLike) -> str | None:
    """For a file of the weights cache: "replace it with `fcnseg weights download NAME --force`";
    None for any other file (the user's own, which only they can replace)."""
    path = Path(path).expanduser()
    try:
        if path.resolve().parent != cache_dir().resolve():
            return None
    except OSError:
        return None
    name = next((e.name for e in REGISTRY.values() if e.filename == path.name), None)
    return f"replace it with `fcnseg weights download {name} --force`" if name else None


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


def _stamp_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def verified_by(path: Path) -> str | None:
    """Which check the cached ``path`` passed, if its stamp is current (the file unchanged since)."""
    try:
        key, _, what = _stamp(path).read_text().partition("\n")
        return what.strip() or None if key == _stamp_key(path) else None
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, what: str) -> None:
    from fcnseg.files import write_text

    write_text(_stamp(path), f"{_stamp_key(path)}\n{what}\n")


def is_verified(path: Path, entry: WeightsEntry) -> bool:
    """True if ``path`` exists and passes ``entry``'s check (run once per version of the file).
    A cached file that fails it is removed, so that the next download fetches it again."""
    if not path.is_file():
        return False
    if verified_by(path):
        return True
    test, what = check(entry)
    problem = test(path)
    if problem:
        path.unlink()
        _stamp(path).unlink(missing_ok=True)
        log.warning("removed %s from the cache: it failed its check (%s); it will be downloaded again", path, problem)
        return False
    _write_stamp(path, what)
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


def download(
    entry: WeightsEntry,
    *,
    mirror: str | None = None,
    progress: bool | None = None,
    offline: bool | None = None,
    force: bool = False,
) -> Path:
    """The verified local file of ``entry``, downloaded into the cache if it is not there yet.
    ``force``: fetch it again even if cached; the cached file is replaced only by one that passed."""
    dest = cached_path(entry)
    if not force and is_verified(dest, entry):
        return dest
    try:
        lock = _exclusive(dest)
        lock.__enter__()
    except OSError as exc:
        from fcnseg.files import write_error

        raise write_error(dest, exc) from None
    try:
        return _download(entry, dest, mirror, progress, offline, force)
    finally:
        lock.__exit__(None, None, None)


def _download(
    entry: WeightsEntry, dest: Path, mirror: str | None, progress: bool | None, offline: bool | None, force: bool
) -> Path:
    if not force and is_verified(dest, entry):  # another process fetched it while we waited
        return dest
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    offline = offline if offline is not None else os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    first = mirrored(entry.urls[0], mirror, entry.filename)
    by_hand = f"fetch {first} by hand and put it at {dest}"
    if offline:
        cached = " (--force needs the network)" if dest.is_file() else " are not cached and"
        raise FcnsegError(f"weights {entry.name!r}{cached} {OFFLINE_ENV} is set; {by_hand}")
    test, what = check(entry)
    failures = []
    for url in dict.fromkeys(mirrored(u, mirror, entry.filename) for u in entry.urls):
        log.info("downloading %s from %s", entry.name, url)
        try:
            fetch(url, dest, verify=test, expect=expected_kind(entry), progress=progress)
        except (FetchError, ChecksumError) as exc:
            failures.append(str(exc))  # each names its URL and what happened (and whether a part is kept)
            continue
        _write_stamp(dest, what)
        log.info("%s: %s in the cache at %s (%s)", entry.name, "replaced" if force else "stored", dest, what)
        return dest
    part = dest.with_name(dest.name + ".part")
    kept = (
        ""
        if not part.is_file() or any(str(part) in f for f in failures)
        else f"; {part} ({describe_size(part.stat().st_size)}) is kept -- run the same command again to resume"
    )
    raise FcnsegError(
        f"weights {entry.name!r}: {' | '.join(failures) or 'no source'}{kept}; or {by_hand}, or set {MIRROR_ENV}"
    )
