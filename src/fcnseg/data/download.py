"""Downloading public datasets: resumable, checksummed, and extracted safely.

``download_dataset("voc2012", root)`` fetches the archive into ``root`` (resuming a partial
``<archive>.part`` file: HTTP Range requests, or a byte offset for file:// URLs), checks its MD5,
and extracts it into ``root``, refusing any member that would land outside ``root`` (absolute
paths, ``..``, links pointing out, device files).

The MD5 sums are those published with torchvision's VOCSegmentation and SBDataset for the very
same archives. Mirrors can be given with ``url=``; the sum still applies (it identifies the file).
"""

from __future__ import annotations

import os
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from fcnseg.errors import FcnsegError
from fcnseg.files import os_error_message, write_text
from fcnseg.fetch import ChecksumError, FetchError, fetch, file_md5  # noqa: F401  (file_md5 re-exported)


@dataclass(frozen=True)
class Resource:
    url: str
    md5: str | None
    dataset_dir: str  # where the data lands, relative to the download root
    spec: str  # dataset format to open it with: "<spec>:<root>"
    about: str


RESOURCES: dict[str, Resource] = {
    "voc2012": Resource(
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
        dataset_dir="VOCdevkit/VOC2012", spec="voc",
        about="PASCAL VOC 2012 train+val, 1.9 GB",
    ),
    "sbd": Resource(
        url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        md5="82b4d87ceb2ed10f6038a1cba92111cb",
        dataset_dir="benchmark_RELEASE/dataset", spec="sbd",
        about="Semantic Boundaries Dataset (SBD), 1.4 GB",
    ),
}


def download_file(url: str, dest: str | os.PathLike, md5: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check ``md5``, return ``dest``.
    An existing ``dest`` with the right checksum is not downloaded again (see ``fcnseg.fetch``)."""
    dest = Path(dest)
    if dest.is_file() and (md5 is None or file_md5(dest) == md5):
        return dest

    def verify(part: Path) -> str | None:
        got = file_md5(part)
        return None if md5 is None or got == md5.lower() else f"MD5 {got}, expected {md5}"

    try:
        return fetch(url, dest, verify=verify, progress=progress)
    except FetchError as exc:
        part = dest.with_name(dest.name + ".part")
        kept = f"; {part} is kept and the next run resumes it" if part.is_file() else ""
        raise FcnsegError(f"{exc}; check the network or give a mirror with --url{kept}") from None
    except ChecksumError as exc:
        raise FcnsegError(f"{exc}, run the command again (or give another --url)") from None


def _inside(root: Path, relative: str) -> bool:
    target = os.path.normpath(os.path.join(root, relative))
    return target == str(root) or target.startswith(str(root) + os.sep)


def _check_member(member: tarfile.TarInfo, root: Path, archive: Path) -> None:
    def refuse(why: str) -> None:
        raise FcnsegError(f"{archive}: refusing to extract {member.name!r} ({why}); the archive is not safe to unpack")

    if os.path.isabs(member.name) or member.name.startswith(("/", "\\")):
        refuse("absolute path")
    if not _inside(root, member.name):
        refuse("path leads outside the target directory")
    if member.issym():
        if os.path.isabs(member.linkname) or not _inside(root, os.path.join(os.path.dirname(member.name), member.linkname)):
            refuse(f"symbolic link to {member.linkname!r} points outside the target directory")
        if not hasattr(tarfile, "data_filter"):
            refuse("symbolic links need Python's tarfile data filter (Python >= 3.11.4)")
    if member.islnk() and (os.path.isabs(member.linkname) or not _inside(root, member.linkname)):
        refuse(f"hard link to {member.linkname!r} points outside the target directory")
    if member.isdev():
        refuse("device or FIFO file")


def safe_extract(archive: str | os.PathLike, root: str | os.PathLike) -> None:
    """Extract a tar archive (any compression) into ``root``; every member is checked first, and
    Python's "data" filter re-checks links against what is already on disk while extracting."""
    archive, root = Path(archive), Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, root, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:
                tar.extractall(root, members=members)
    except getattr(tarfile, "FilterError", ()) as exc:
        raise FcnsegError(f"{archive}: refusing to extract ({exc}); the archive is not safe to unpack") from None
    except (tarfile.TarError, EOFError) as exc:
        raise FcnsegError(f"{archive}: cannot extract ({exc}); delete it and download again") from None
    except OSError as exc:
        raise FcnsegError(f"{archive}: {os_error_message(exc, 'cannot extract into', root)}") from None


def _url_filename(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name


def download_dataset(name: str, root: str | os.PathLike, *, url: str | None = None, md5: str | None = "registry",
                     keep_archive: bool = False, progress: bool = True) -> Path:
    """Download and extract dataset ``name`` (see ``RESOURCES``) into ``root``; return its folder.

    ``url`` replaces the registry's address (a mirror, or file:// in tests); ``md5="registry"``
    uses the registry's checksum, a hex string another one, ``None`` skips the check.
    """
    if name not in RESOURCES:
        raise FcnsegError(f"no download for {name!r}; available: {', '.join(RESOURCES)}")
    resource = RESOURCES[name]
    root = Path(root).expanduser()
    done = root / f".fcnseg-{name}.done"
    target = root / resource.dataset_dir
    if done.is_file() and target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    url = url or resource.url
    archive = root / (_url_filename(url) or _url_filename(resource.url))
    download_file(url, archive, resource.md5 if md5 == "registry" else md5, progress)
    safe_extract(archive, root)
    if not target.is_dir():
        raise FcnsegError(f"{archive} did not contain {resource.dataset_dir}; is --url the right archive?")
    write_text(done, f"{url}\n")
    if not keep_archive:
        archive.unlink()
    return target
