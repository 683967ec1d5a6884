"""Downloading public datasets: resumable, checksummed, and extracted safely.

``download_dataset("voc2012", root)`` fetches the archive into ``root`` (resuming a partial
``<archive>.part`` file with an HTTP Range request; see ``fcnseg.fetch`` for what makes a transfer
complete), checks its MD5 and extracts it (tar, any compression, or zip: ``safe_extract`` tells them
apart by content), refusing any member that would land outside the target (absolute paths, ``..``,
links pointing out, device files; a zip may hold no links at all).

Extraction goes into a temporary folder beside the target (``root/.fcnseg-extract-*``); the
dataset's folder is renamed into place only once the whole archive is out, so a failed extraction
(a corrupt archive, a full disk) leaves an earlier copy of the folder exactly as it was, and the
error says whether there was one. Only an archive this module downloaded into ``root`` is deleted
after extracting; a ``file://`` URL (the user's own archive) is read where it lies and never
moved, copied or deleted.

The addresses and MD5 sums are those of torchvision's VOCSegmentation and SBDataset (torchvision
0.29.1, torchvision/datasets/voc.py and sbd.py) for the very same archives. Mirrors can be given
with ``url=``; the sum still applies (it identifies the file). PASCAL-Context's annotation archive
has no published checksum: it is checked by kind (a tar archive) and by content (labels.txt and
trainval/ in it) only. A dataset made of several archives names the others in ``needs``
(PASCAL-Context needs VOC2010's images); they are fetched first, each with its own address and sum.
SIFT Flow's zip (the address the FCN reference gives in data/sift-flow/README.md) has no published
checksum either: md5 is None and it is verified by structure only (its Images/, SemanticLabels/
and GeoLabels/ folders, at the zip's top level).

Some hosts publish no archive a program may fetch (an account, a licence form): their entries have
no ``url`` and ``manual_step(name)`` is the one line saying where to get the data by hand;
`fcnseg data download NAME` prints it and exits with status 3 (nothing was downloaded).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fcnseg.errors import FcnsegError, did_you_mean
from fcnseg.fetch import (  # noqa: F401
    ChecksumError,
    FetchError,
    IncompleteError,
    WrongContentError,
    fetch,
    file_md5,  # (file_md5 re-exported)
    page_problem,
)
from fcnseg.files import os_error_message, write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    url: str  # "" where the host publishes no archive to fetch: `manual` says where to get the data
    md5: str | None
    dataset_dir: str  # where the data lands, relative to the download root
    spec: str  # dataset format to open it with: "<spec>:<root>"
    about: str
    confirmed: str = "torchvision 0.29.1: torchvision/datasets/voc.py (VOCSegmentation) and sbd.py (SBDataset)"
    needs: tuple[str, ...] = ()  # other downloads this dataset is made of, fetched first
    #: True: the archive has no top folder of its own; its members are extracted into dataset_dir
    extract_into: bool = False
    contains: tuple[str, ...] = ()  # what dataset_dir must hold once extracted (else: the wrong archive)
    manual: str = ""  # for entries without url: where and how to get the data by hand


MANUAL_EXIT = 3  # `fcnseg data download NAME` for a dataset without a public archive: nothing downloaded


RESOURCES: dict[str, Resource] = {
    "voc2012": Resource(
        url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
        dataset_dir="VOCdevkit/VOC2012",
        spec="voc",
        about="PASCAL VOC 2012 train+val, 1.9 GB",
    ),
    "sbd": Resource(
        url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        md5="82b4d87ceb2ed10f6038a1cba92111cb",
        dataset_dir="benchmark_RELEASE/dataset",
        spec="sbd",
        about="Semantic Boundaries Dataset (SBD), 1.4 GB",
    ),
    "voc2010": Resource(
        url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
        md5="da459979d0c395079b5c75ee67908abb",
        dataset_dir="VOCdevkit/VOC2010",
        spec="pascal-context",
        about="PASCAL VOC 2010 train+val, 1.3 GB (the images PASCAL-Context annotates)",
        confirmed="torchvision 0.29.1: torchvision/datasets/voc.py (VOCSegmentation, year 2010)",
    ),
    "pascal-context": Resource(
        url="https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
        md5=None,
        dataset_dir="pascal-context",
        spec="pascal-context",
        about="PASCAL-Context annotations (labels.txt, trainval/*.mat), 31 MB, plus voc2010",
        confirmed="the dataset's page https://cs.stanford.edu/~roozbeh/pascal-context/ (no checksum published)",
        needs=("voc2010",),
        extract_into=True,
        contains=("labels.txt", "trainval"),
    ),
    "siftflow": Resource(
        url="http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip",
        md5=None,
        dataset_dir="SiftFlowDataset",
        spec="siftflow",
        about="SIFT Flow, 2,688 images with semantic and geometric labels, about 140 MB (a zip; no checksum "
        "published: verified by structure only)",
        confirmed="FCN reference (shelhamer/fcn.berkeleyvision.org) data/sift-flow/README.md: the URL, no checksum",
        extract_into=True,
        contains=tuple(
            f"{d}/spatial_envelope_256x256_static_8outdoorcategories" for d in ("Images", "SemanticLabels", "GeoLabels")
        ),
    ),
    "nyud": Resource(
        url="http://dl.caffe.berkeleyvision.org/nyud.tar.gz",
        md5=None,
        dataset_dir="nyud",
        spec="nyud",
        about="NYUDv2 in the FCN authors' layout (images, depth, HHA, 40-class labels), no checksum published",
        confirmed="fcn.berkeleyvision.org at 1305c7378a9f: data/nyud/README.md (URL; no checksum published)",
        extract_into=True,  # nyud:DIR/nyud finds the data with or without the archive's own top folder
    ),
    "cityscapes": Resource(
        url="",
        md5=None,
        dataset_dir=".",
        spec="cityscapes",
        about="Cityscapes (an account is needed to download it)",
        confirmed="https://www.cityscapes-dataset.com/downloads/",
        manual="Cityscapes is downloaded only with an account: log in at "
        "https://www.cityscapes-dataset.com/downloads/, get leftImg8bit_trainvaltest.zip and "
        "gtFine_trainvaltest.zip, unzip both into one folder DIR and use cityscapes:DIR",
    ),
}


def manual_step(name: str) -> str | None:
    """The one line saying where to get dataset ``name`` by hand, or None if it can be downloaded."""
    resource = _resource(name)
    return None if resource.url else resource.manual


def _resource(name: str) -> Resource:
    if name not in RESOURCES:
        raise FcnsegError(f"no download for {name!r}{did_you_mean(name, RESOURCES)}; available: {', '.join(RESOURCES)}")
    return RESOURCES[name]


def tar_problem(head: bytes) -> str | None:
    """None if ``head`` (a file's first bytes) can start a tar archive, plain or compressed."""
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return None
    return "not a tar archive (plain, gzip, bzip2 or xz)"


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip


def archive_problem(head: bytes) -> str | None:
    """None if ``head`` can start an archive ``safe_extract`` reads: a tar (any compression) or a zip."""
    if head.startswith(ZIP_MAGIC) or tar_problem(head) is None:
        return None
    return "not an archive (tar, plain or compressed, or zip)"


def download_file(
    url: str, dest: str | os.PathLike, md5: str | None = None, progress: bool = True, expect=None
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check ``md5``, return ``dest``.
    An existing ``dest`` with the right checksum is not downloaded again (see ``fcnseg.fetch``);
    ``expect(head)`` refuses a wrong kind of file from its first bytes."""
    dest = Path(dest)
    if dest.is_file() and (md5 is None or file_md5(dest) == md5.lower()):
        return dest

    def verify(part: Path) -> str | None:
        got = file_md5(part)
        return None if md5 is None or got == md5.lower() else f"MD5 {got}, expected {md5}"

    try:
        return fetch(url, dest, verify=verify, expect=expect, progress=progress)
    except IncompleteError:
        raise  # it says how many bytes arrived, and that the same command resumes
    except WrongContentError as exc:
        raise FcnsegError(f"{exc}; give the archive's own address with --url") from None
    except FetchError as exc:
        raise FcnsegError(f"{exc}; check the network or give a mirror with --url") from None
    except ChecksumError as exc:
        raise FcnsegError(
            f"{exc}: the source does not serve the published archive; give another --url, "
            "or --md5 with the sum of the archive you trust"
        ) from None


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
        if os.path.isabs(member.linkname) or not _inside(
            root, os.path.join(os.path.dirname(member.name), member.linkname)
        ):
            refuse(f"symbolic link to {member.linkname!r} points outside the target directory")
        if not hasattr(tarfile, "data_filter"):
            refuse("symbolic links need Python's tarfile data filter (Python >= 3.11.4)")
    if member.islnk() and (os.path.isabs(member.linkname) or not _inside(root, member.linkname)):
        refuse(f"hard link to {member.linkname!r} points outside the target directory")
    if member.isdev():
        refuse("device or FIFO file")


def _check_zip_member(info: zipfile.ZipInfo, root: Path, archive: Path) -> None:
    def refuse(why: str) -> None:
        raise FcnsegError(
            f"{archive}: refusing to extract {info.filename!r} ({why}); the archive is not safe to unpack"
        )

    name = info.filename
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        refuse("absolute path")
    if not _inside(root, name.replace("\\", "/")):
        refuse("path leads outside the target directory")
    mode = info.external_attr >> 16  # Unix mode bits, where the zip was made on Unix
    if stat.S_ISLNK(mode):
        refuse("symbolic link")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        refuse("device or FIFO file")


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            _check_zip_member(info, root, archive)
        zf.extractall(root, members=members)


def safe_extract(
    archive: str | os.PathLike, root: str | os.PathLike, corrupt_advice: str = "delete it and download it again"
) -> None:
    """Extract a tar archive (any compression) or a zip into ``root``, told apart by content; every
    member is checked first (a zip's links and device files are refused outright), and for tar
    Python's "data" filter re-checks links against what is already on disk while extracting."""
    archive, root = Path(archive), Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, root)
            return
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
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise FcnsegError(f"{archive}: cannot extract ({exc}); {corrupt_advice}") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FcnsegError(
                f"{archive}: cannot extract into {root}: {exc.strerror}; free disk space "
                "(the extracted dataset needs about as much as the archive again)"
            ) from None
        raise FcnsegError(f"{archive}: {os_error_message(exc, 'cannot extract into', root)}") from None


def _remove_interrupted_extractions(root: Path) -> None:
    """Temporary folders that a killed extraction left in ``root`` (their process is gone)."""
    for folder in root.glob(".fcnseg-extract-*"):
        pid = folder.name.split("-")[2]
        try:
            os.kill(int(pid), 0)
            continue  # still extracting (another process)
        except ProcessLookupError:
            pass
        except (ValueError, OSError):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed %s, left by an interrupted extraction", folder)


def extract_into_place(
    archive: Path,
    root: Path,
    dataset_dir: str,
    ours: bool = True,
    *,
    extract_into: bool = False,
    contains: tuple[str, ...] = (),
) -> Path:
    """Extract ``archive`` into a temporary folder in ``root`` and rename its ``dataset_dir`` to
    ``root/dataset_dir`` only when all of it is out; an earlier folder there is replaced only then.
    ``extract_into``: the archive's members themselves go into ``dataset_dir`` (an archive without
    a top folder); ``contains``: what the folder must hold, else the archive is the wrong one.
    Whatever fails, the temporary folder is removed and the error says what became of the target."""
    target = root / dataset_dir
    before = target.exists()
    state = (
        f"the earlier {target} is untouched" if before else f"nothing was written to {target}"
    ) + " and the partial extraction was removed"
    _remove_interrupted_extractions(root)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".fcnseg-extract-{os.getpid()}-", dir=root))
    except OSError as exc:
        raise FcnsegError(os_error_message(exc, "cannot create a folder in", root)) from None
    try:
        try:
            safe_extract(
                archive,
                tmp / dataset_dir if extract_into else tmp,
                "delete it and run the same command to download it again"
                if ours
                else "the archive is damaged or incomplete (it was left as it is)",
            )
        except FcnsegError as exc:
            raise FcnsegError(f"{exc} ({state})") from None
        new = tmp / dataset_dir
        lacking = [part for part in contains if not (new / part).exists()] if new.is_dir() else [dataset_dir]
        if lacking:
            raise FcnsegError(f"{archive} does not contain {', '.join(lacking)}; is it the right archive? ({state})")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if before:
                os.replace(target, tmp / ".earlier")
            try:
                os.replace(new, target)
            except OSError:
                if before:
                    os.replace(tmp / ".earlier", target)
                raise
        except OSError as exc:
            raise FcnsegError(
                f"{os_error_message(exc, 'cannot move the extracted folder to', target)} ({state})"
            ) from None
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _url_filename(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name


def download_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    url: str | None = None,
    md5: str | None = "registry",
    keep_archive: bool = False,
    progress: bool = True,
) -> Path:
    """Download and extract dataset ``name`` (see ``RESOURCES``) into ``root``; return its folder.

    ``url`` replaces the registry's address (a mirror, or a file:// URL: the archive is then read
    where it lies, and left there); ``md5="registry"`` uses the registry's checksum, a hex string
    another one, ``None`` skips the check.
    """
    resource = _resource(name)
    if not resource.url:
        raise FcnsegError(resource.manual)
    root = Path(root).expanduser()
    done = root / f".fcnseg-{name}.done"
    target = root / resource.dataset_dir
    for part in resource.needs:  # each with its own published address and sum
        download_dataset(part, root, keep_archive=keep_archive, progress=progress)
    if done.is_file() and target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    url = url or resource.url
    md5 = resource.md5 if md5 == "registry" else md5
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":  # the user's own archive: checked and read in place, never moved or deleted
        archive, ours = Path(urllib.request.url2pathname(parsed.path)), False
        _check_own_archive(archive, md5)
    else:
        archive, ours = root / (_url_filename(url) or _url_filename(resource.url)), True
        download_file(url, archive, md5, progress, expect=archive_problem)
    extract_into_place(
        archive, root, resource.dataset_dir, ours, extract_into=resource.extract_into, contains=resource.contains
    )
    write_text(done, f"{url}\n")
    if ours and not keep_archive:
        archive.unlink()
    kept = "removed" if ours and not keep_archive else "kept" if ours else "left as it is (your own file)"
    log.info("extracted %s into %s; the archive was %s", archive.name, target, kept)
    return target


def _check_own_archive(archive: Path, md5: str | None) -> None:
    if not archive.is_file():
        raise FcnsegError(f"--url {archive.as_uri()}: no such file; check the path")
    try:
        with open(archive, "rb") as f:
            head = f.read(1024)
        got = file_md5(archive) if md5 else None
    except OSError as exc:
        raise FcnsegError(os_error_message(exc, "cannot read", archive)) from None
    problem = page_problem(head, who=f"{archive} is") or archive_problem(head)
    if problem:
        raise FcnsegError(f"--url {archive.as_uri()}: {problem}; it was left as it is")
    if md5 and got != md5.lower():
        raise FcnsegError(
            f"{archive}: MD5 {got}, expected {md5}: not the published archive (it was left as "
            "it is); pass --md5 with its own sum, or --no-checksum, if you trust it"
        )
