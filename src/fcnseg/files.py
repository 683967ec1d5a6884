"""Every file fcnseg writes or reads as weights goes through here: the lowest layer of the package.

Writing: ``atomic_write(path)`` opens a temporary file beside ``path`` and renames it over ``path``
only once everything is written and flushed. A crash, a kill or a full disk leaves either the old
file or the new one, never half of one, and the temporary file is removed on any error (a kill -9
can still leave one: ``clean_stale_temps`` removes them on the next start). Failures become one
``FcnsegError`` naming the file and the fix that fits the cause (full disk, read-only, missing
folder, permission).

Reading weights: ``safe_torch_load`` is ``torch.load(weights_only=True)``; nothing in a file is
ever executed, and every failure is one line naming the file.

Only the standard library, numpy and torch are imported here (torch lazily), so models, data,
engine, inference and weights can all use this module without import cycles.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fcnseg.errors import FcnsegError

TEMP_SUFFIX = ".tmp"
HOME_ENV = "FCNSEG_HOME"


def fcnseg_home() -> Path:
    """fcnseg's cache folder: $FCNSEG_HOME, default $XDG_CACHE_HOME/fcnseg or ~/.cache/fcnseg
    (downloaded weights under weights/, computed HHA images under hha/)."""
    home = os.environ.get(HOME_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fcnseg"
    )
    return Path(home).expanduser()


_ADVICE = {
    errno.ENOSPC: "free disk space or write somewhere with room (the previous file, if any, is intact)",
    errno.EDQUOT: "free disk space (your quota is full) or write somewhere with room",
    errno.EFBIG: "the file is larger than this file system or your file-size limit allows; write somewhere else",
    errno.EROFS: "the location is read-only; choose a writable one",
    errno.EACCES: "you lack permission there; choose a location you can use",
    errno.EPERM: "the operation is not permitted there; choose another location",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "it is a folder; give a file name",
    errno.EEXIST: "something is in the way; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EIO: "the device reported an I/O error; check the disk or choose another location",
}


def os_error_message(exc: OSError, action: str = "cannot access", path: str | os.PathLike | None = None) -> str:
    """One line for any OSError: what failed, on which file, and the advice that fits its cause."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = path if path is not None else exc.filename
    fix = _ADVICE.get(exc.errno, "check the path and try again")
    return f"{action} {where}: {reason}; {fix}" if where else f"{action}: {reason}; {fix}"


class WriteError(FcnsegError):
    """A file could not be written (full disk, read-only, ...): callers that process many items
    (predict) stop at the first one rather than failing every item after it the same way."""


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """One line for an OSError met while writing ``path``, with advice that fits the cause."""
    return WriteError(os_error_message(exc, "cannot write", path))


def read_error(path: str | os.PathLike, exc: OSError) -> FcnsegError:
    """One line for an OSError met while reading ``path``."""
    return FcnsegError(os_error_message(exc, "cannot read", path))


def check_input_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """The stat of ``path`` if it is a regular file to read; otherwise one FcnsegError that says what
    is true: it does not exist, it is a folder, it is a FIFO/socket/device (never opened: a FIFO would
    block), a symlink loop, or it cannot be reached (permission)."""
    import stat

    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        broken = " (a broken symlink)" if path.is_symlink() else ""
        raise FcnsegError(f"{path}: {what} does not exist{broken}; check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FcnsegError(f"{path}: {what} is a symlink loop; point the link at a real file") from None
        raise read_error(path, exc) from None
    if stat.S_ISDIR(info.st_mode):
        raise FcnsegError(f"{path}: {what} is a folder, not a file; give a file inside it")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "a device"
        raise FcnsegError(f"{path}: {what} is {kind}, not a regular file; give a regular file")
    return info


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _new_file_mode(path: Path) -> int:
    """The replaced file's mode, or what a plain open() would give a new file under the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Context manager: write to a temporary file beside ``path``, then rename it into place."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_write mode must be 'wb' or 'w'")
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, _new_file_mode(path))  # mkstemp makes 0600; give what open() would give
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _blocking_ancestor(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` if it is not a folder (so nothing can be created below it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _parents_usable(path: Path, option: str) -> Path:
    blocker = _blocking_ancestor(path)
    if blocker is not None:
        raise FcnsegError(f"{option} {path}: {blocker} is a file, not a folder; choose another path")
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Before any work: FcnsegError if ``path`` cannot be a file to write (it is a folder, or a file
    stands where one of its folders would be)."""
    path = Path(path)
    if path.is_dir():
        raise FcnsegError(f"{option} {path} is a folder; give a file name inside it instead")
    return _parents_usable(path, option)


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Before any work: FcnsegError if ``path`` cannot be an output folder (an existing file is there,
    or a file stands where one of its parents would be)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FcnsegError(f"{option} {path} is an existing file, not a folder; choose a folder name")
    return _parents_usable(path, option)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return json_safe(value.item())
    return value


def to_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text (absent values as null, never a bare NaN)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    return write_text(path, to_json(value, indent) + "\n")


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to a log file (e.g. metrics.jsonl). Not atomic by nature: a reader must skip
    a last line cut short; a failure is one FcnsegError naming the file."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise write_error(path, exc) from None


class NpyRows:
    """A C x H x W ``.npy`` array written band of rows by band of rows through ordinary writes.

    ``rows[:, y0:y1] = block`` writes ``block`` (C x (y1 - y0) x W) at its place in the file. Used
    inside :func:`atomic_write`, a full disk is an OSError on write (never a SIGBUS as with a
    memory map on a full tmpfs) and a failure leaves no partial file."""

    def __init__(self, f: IO, shape: tuple[int, int, int], dtype: Any):
        import numpy as np

        self.f, self.shape, self.dtype = f, tuple(int(v) for v in shape), np.dtype(dtype)
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        )
        self.offset = f.tell()
        channels, height, width = self.shape
        f.truncate(self.offset + channels * height * width * self.dtype.itemsize)

    def __setitem__(self, key: Any, block: Any) -> None:
        import numpy as np

        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) and isinstance(key[1], slice)):
            raise TypeError("NpyRows supports only rows[:, y0:y1] = block")
        channels, height, width = self.shape
        y0 = key[1].start or 0
        block = np.asarray(block).astype(self.dtype, copy=False)
        plane = height * width * self.dtype.itemsize
        for c in range(channels):
            self.f.seek(self.offset + c * plane + y0 * width * self.dtype.itemsize)
            self.f.write(np.ascontiguousarray(block[c]).tobytes())


@contextlib.contextmanager
def atomic_npy_rows(path: str | os.PathLike, shape: tuple[int, int, int], dtype: Any) -> Iterator[NpyRows]:
    """Context manager yielding an :class:`NpyRows` that becomes ``path`` once the block ends."""
    with atomic_write(path, "wb") as f:
        yield NpyRows(f, shape, dtype)


def write_npy(path: str | os.PathLike, array: Any) -> Path:
    """``numpy.save`` ``array`` to ``path`` atomically."""
    import numpy as np

    with atomic_write(path, "wb") as f:
        np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
    return Path(path)


class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed write: torch.save reports it only as a
    RuntimeError about positions, which would lose the cause (a full disk)."""

    def __init__(self, f: IO):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save ``obj`` to ``path`` atomically."""
    import torch

    with atomic_write(path, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError as exc:  # torch wraps a failed write (e.g. a full disk) in RuntimeError
            if writer.error is not None:
                raise writer.error from None
            raise OSError(errno.EIO, str(exc).splitlines()[0][:120]) from None
    return Path(path)


def clean_stale_temps(folder: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Remove temporary files ``atomic_write`` left in ``folder`` (after a kill -9); returns them."""
    import time

    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.glob(f".*{TEMP_SUFFIX}"):
        try:
            if p.is_file() and now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                removed.append(p)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- reading weights


def _is_legacy_torch_file(path: Path) -> bool:
    """Files from torch.save(..., _use_new_zipfile_serialization=False) start with a pickle protocol byte."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def safe_torch_load(path: str | os.PathLike, what: str = "weights file") -> Any:
    """torch.load with weights_only=True; every failure becomes one FcnsegError naming the file."""
    import torch

    path = Path(path)
    check_input_file(path, what)
    try:
        is_torch = zipfile.is_zipfile(path) or _is_legacy_torch_file(path)
    except OSError as exc:
        raise FcnsegError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not is_torch:
        raise FcnsegError(
            f"{what} {path} is corrupt or truncated, or not a PyTorch file at all; "
            "pass a .pt/.pth written by torch.save (download or save it again)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        first = first.split(". ")[0]  # never repeat torch's advice to drop weights_only
        raise FcnsegError(
            f"{what} {path} holds objects that cannot be loaded safely "
            f"(refused: {first[:120]}); re-save it as a plain state_dict of tensors"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FcnsegError(f"{what} {path} is corrupt or truncated ({first[:120]}); download or save it again") from None


def content_digest(obj: Any) -> str:
    """SHA-256 over a nest of dicts, lists, tensors and primitives, in order: each tensor's dtype,
    shape and bytes, each key and primitive's repr. A checkpoint stores it when saved and is checked
    against it when read (weights.format), so bytes changed on disk are found, not trained on."""
    import torch

    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            h.update(b"{")
            for key, item in value.items():
                h.update(repr(key).encode())
                walk(item)
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for item in value:
                walk(item)
            h.update(b"]")
        else:
            h.update(repr(value).encode())

    walk(obj)
    return h.hexdigest()


def read_safetensors(path: str | os.PathLike, what: str = "weights file") -> tuple[dict, dict]:
    """(tensors, header metadata) of a .safetensors file; no code can run from it. One-line errors."""
    path = Path(path)
    check_input_file(path, what)
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open
    except ImportError:
        raise FcnsegError(f"reading {path} needs the safetensors package; pip install safetensors") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise FcnsegError(
            f"{what} {path} is not a readable safetensors file ({first}); export or download it again"
        ) from None
