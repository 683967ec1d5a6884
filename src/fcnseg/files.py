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
import json
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator

from fcnseg.errors import FcnsegError

TEMP_SUFFIX = ".tmp"


def write_error(path: str | os.PathLike, exc: OSError) -> FcnsegError:
    """One line for an OSError met while writing ``path``, with advice that fits the cause."""
    reason = exc.strerror or type(exc).__name__
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free disk space or write somewhere with room (the previous file, if any, is intact)"
    elif code in (errno.EROFS,):
        fix = "the location is read-only; choose a writable one"
    elif code in (errno.EACCES, errno.EPERM):
        fix = "you lack permission there; choose a location you can write to"
    elif code == errno.ENOENT:
        fix = "its folder does not exist and cannot be created; check the path"
    elif code in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        fix = "a file or folder is in the way; choose another path"
    else:
        fix = "choose another location"
    return FcnsegError(f"cannot write {path}: {reason}; {fix}")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Context manager: write to a temporary file beside ``path``, then rename it into place."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_write mode must be 'wb' or 'w'")
    path = Path(path)
    if path.is_dir():
        raise FcnsegError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
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


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save ``obj`` to ``path`` atomically."""
    import torch

    with atomic_write(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # torch wraps a failed write (e.g. a full disk) in RuntimeError
            raise OSError(errno.ENOSPC if "write" in str(exc).lower() else errno.EIO,
                          str(exc).splitlines()[0][:120]) from None
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
    if not path.is_file():
        raise FcnsegError(f"{what} {path} does not exist; check the path")
    try:
        is_torch = zipfile.is_zipfile(path) or _is_legacy_torch_file(path)
    except OSError as exc:
        raise FcnsegError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not is_torch:
        raise FcnsegError(f"{what} {path} is corrupt or truncated, or not a PyTorch file at all; "
                          "pass a .pt/.pth written by torch.save (download or save it again)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        first = first.split(". ")[0]  # never repeat torch's advice to drop weights_only
        raise FcnsegError(f"{what} {path} holds objects that cannot be loaded safely "
                          f"(refused: {first[:120]}); re-save it as a plain state_dict of tensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FcnsegError(f"{what} {path} is corrupt or truncated ({first[:120]}); "
                          "download or save it again") from None
