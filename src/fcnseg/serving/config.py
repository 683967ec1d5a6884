"""What `fcnseg serve` serves and how: one dataclass, carried to uvicorn's worker processes in the
environment, and the one function that turns it into a loaded model.

Every server option is a field of :class:`ServeConfig` declared with the same field metadata as
``TrainConfig`` (``fcnseg.config._opt``: help text, choices, bounds): ``add_serve_arguments``
makes the command-line options from the fields (``upload_timeout`` -> ``--upload-timeout``,
``access_log`` -> ``--access-log/--no-access-log``), and ``__post_init__`` checks every bound, so
the defaults and limits are written once, for the CLI, tests and the worker processes alike.

``--workers N`` starts N processes that each import ``fcnseg.serving.app:app_from_env``; they
read this config from ``FCNSEG_SERVE_CONFIG`` (JSON), so every worker loads the same model with
the same limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import socket
import types
import typing
from dataclasses import asdict, dataclass, fields

from fcnseg.config import _opt, arg_type, check_option
from fcnseg.errors import FcnsegError

ENV_VAR = "FCNSEG_SERVE_CONFIG"
MODEL_FIELDS = ("checkpoint", "weights", "backend", "fast")  # options from the shared model-options helper
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def host_name_problem(value: list) -> str | None:
    bad = [v for v in value if not isinstance(v, str) or not v.strip() or any(c in v for c in " /\\@")]
    return f"must be host names such as example.org (or *), not {bad[0]!r}" if bad else None


@dataclass
class ServeConfig:
    # the model: set by the shared model options (--checkpoint/--weights/--backend/--no-fast)
    checkpoint: str | None = None  # the older name of ``weights`` (either may be given)
    weights: str | None = None  # published weights by name (fcn8s-voc, ...) or any model file
    backend: str | None = None  # torch / onnxruntime; None = by file type
    fast: bool | None = None  # bf16 fast path; None = where the CPU supports it
    # the server: each field is also a `fcnseg serve` option
    host: str = _opt("127.0.0.1", "address to bind (127.0.0.1: this machine only; 0.0.0.0 = every interface)")
    port: int = _opt(8000, "TCP port", min=1, max=65535)
    workers: int = _opt(1, "server processes, each with its own model (uvicorn workers)", min=1, max=256)
    concurrency: int = _opt(0, "inference threads per process (0: cores / workers)", min=0, max=1024)
    queue: int = _opt(
        -1,
        "requests that may wait for a thread before others get 503 (-1: 16, or 4 x threads if more)",
        min=-1,
        max=100_000,
    )
    max_upload_mb: float = _opt(20.0, "largest request body in MB", above=0, max=4096)
    max_pixels: int = _opt(16_000_000, "largest decoded image in pixels, checked before decoding", min=1)
    upload_timeout: float = _opt(60.0, "seconds an upload may take in all; slower ones get 408", above=0)
    header_timeout: float = _opt(
        10.0,
        "seconds a client has to send a request's headers (and an idle "
        "upload to send its next bytes) before the connection is closed",
        above=0,
        max=3600,
    )
    shutdown_timeout: float = _opt(
        60.0, "on SIGTERM, seconds requests in flight may take to finish; later ones get 503", min=0, max=86400
    )
    allow_host: list = _opt(
        [],
        "also answer requests whose Host header is NAME (repeatable; * = any). By "
        "default only IP addresses, localhost and the --host name are answered, "
        "so web pages cannot reach the server by DNS rebinding",
        check=host_name_problem,
    )
    access_log: bool = _opt(True, "log every request")

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.weights is None):
            raise FcnsegError("give exactly one model: --weights NAME_OR_FILE (or its alias --checkpoint)")
        for f in fields(self):
            if f.metadata:
                value = _typed(f, getattr(self, f.name))
                setattr(self, f.name, value)
                check_option(flag(f.name), value, f.metadata)

    @property
    def threads(self) -> int:
        """Inference threads in this process: the cores shared among the worker processes."""
        return self.concurrency or max(1, usable_cores() // self.workers)

    @property
    def intra_op_threads(self) -> int:
        """Threads each inference uses: the cores left per inference thread (1 by default)."""
        return max(1, usable_cores() // (self.workers * self.threads))

    @property
    def waiting(self) -> int:
        """How many requests may wait for a free inference thread before new ones get 503."""
        return max(16, 4 * self.threads) if self.queue < 0 else self.queue

    @property
    def max_requests(self) -> int:
        """Requests (uploads included) the app holds at once before answering 503 itself; /health
        is never counted. Uploads do not hold a pool place, so this bounds the bodies in memory."""
        return 2 * (self.threads + self.waiting) + 16

    @property
    def max_connections(self) -> int:
        """Open connections per process before new ones get a 503 at once: above ``max_requests``,
        so the app (JSON, Retry-After, /health exempt) answers first."""
        return self.max_requests + 64

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def allowed_host(self, name: str) -> bool:
        """May a request with ``Host: name`` (port stripped) be answered? IP addresses always (DNS
        rebinding needs a domain name), localhost, the bound --host (and this machine's name when
        bound to every interface), --allow-host names."""
        if "*" in self.allow_host:
            return True
        name = name.strip().lower().rstrip(".")
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
        allowed = {*LOOPBACK_NAMES, self.host.lower().rstrip("."), *(h.lower().rstrip(".") for h in self.allow_host)}
        if self.host in ("0.0.0.0", "::"):  # every interface: this machine's own name too
            allowed.add(socket.gethostname().lower())
        return name in allowed

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        text = os.environ.get(ENV_VAR)
        if not text:
            raise FcnsegError(f"{ENV_VAR} is not set; start the server with `fcnseg serve`")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(ServeConfig)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _typed(f: dataclasses.Field, value):
    """``value`` as the field's type (an int given as 2.0 is 2), or a one-line error."""
    typ = _base_type(f)
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is list and isinstance(value, tuple):
        return list(value)
    if not ok:
        raise FcnsegError(f"{flag(f.name)} expects {typ.__name__}, got {value!r}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per server field of :class:`ServeConfig`, with its help, default and bounds; unset
    options stay out of the namespace (``config_from_args`` fills in the defaults)."""
    defaults = ServeConfig(checkpoint="-")
    for f in fields(ServeConfig):
        if not f.metadata:
            continue
        typ, meta = _base_type(f), f.metadata
        default = getattr(defaults, f.name)
        help_text = meta["help"] + (
            f" (default: {default:g})"
            if isinstance(default, float)
            else f" (default: {default})"
            if default != [] and default is not True
            else ""
        )
        common = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if typ is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **common)
        elif typ is list:
            parser.add_argument(flag(f.name), action="append", metavar="NAME", **common)
        else:
            bounds = {k: meta[k] for k in ("min", "max", "above", "below", "check") if meta.get(k) is not None}
            parser.add_argument(
                flag(f.name),
                metavar="S" if "timeout" in f.name else f.name.split("_")[-1].upper(),
                type=arg_type(typ, choices=meta.get("choices"), **bounds),
                **common,
            )


def config_from_args(args: argparse.Namespace, **model) -> ServeConfig:
    """The config from parsed options (server fields given on the command line) and the model fields."""
    given = {f.name: getattr(args, f.name) for f in fields(ServeConfig) if f.metadata and hasattr(args, f.name)}
    return ServeConfig(**model, **given)


def load_segmenter(config: ServeConfig):
    """The model a server process uses (a :class:`fcnseg.inference.Segmenter`): a checkpoint or
    export file, or published weights by name (downloaded and verified once, then cached). Also sets
    this process's torch threads, so concurrent requests share the cores instead of oversubscribing."""
    import torch

    from fcnseg.inference import Segmenter

    torch.set_num_threads(config.intra_op_threads)
    options = {
        "backend": config.backend,
        "fast": config.fast,
        "max_pixels": config.max_pixels,
        "threads": config.intra_op_threads,
    }
    return Segmenter.from_pretrained(config.weights or config.checkpoint, **options)  # any model source
