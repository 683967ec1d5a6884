"""What `fcnseg serve` serves and how: one dataclass, carried to uvicorn's worker processes in the
environment, and the one function that turns it into a loaded model.

``--workers N`` starts N processes that each import ``fcnseg.serving.app:app_from_env``; they
read this config from ``FCNSEG_SERVE_CONFIG`` (JSON), so every worker loads the same model with
the same limits.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from fcnseg.errors import FcnsegError

ENV_VAR = "FCNSEG_SERVE_CONFIG"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class ServeConfig:
    checkpoint: str | None = None     # .pt, .safetensors or .onnx
    weights: str | None = None        # published weights by name (fcn8s-voc, ...) or any weights file
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1                  # server processes (uvicorn workers), each with its own model
    concurrency: int = 0              # inference threads per process; 0 = cores // workers
    queue: int = -1                   # requests waiting for a thread beyond those running; -1 = max(16, 4 x threads)
    max_upload_mb: float = 20.0       # request body limit
    max_pixels: int = 16_000_000      # decoded image limit (decompression-bomb guard)
    upload_timeout_s: float = 60.0    # a body still arriving after this is refused (408): slow clients
    backend: str | None = None        # torch / onnxruntime; None = by file type
    fast: bool | None = None          # bf16 fast path; None = where the CPU supports it

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.weights is None):
            raise FcnsegError("give exactly one of --checkpoint FILE or --weights NAME")
        if self.workers < 1:
            raise FcnsegError(f"--workers {self.workers} must be at least 1")
        if self.concurrency < 0:
            raise FcnsegError(f"--concurrency {self.concurrency} must be positive (0 = cores / workers)")
        if self.queue < -1:
            raise FcnsegError(f"--queue {self.queue} must be 0 or more")
        if self.max_upload_mb <= 0 or self.max_pixels <= 0 or self.upload_timeout_s <= 0:
            raise FcnsegError("--max-upload-mb, --max-pixels and --upload-timeout must be positive")
        if not 0 < self.port < 65536:
            raise FcnsegError(f"--port {self.port} is not a TCP port; choose 1-65535")

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
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        text = os.environ.get(ENV_VAR)
        if not text:
            raise FcnsegError(f"{ENV_VAR} is not set; start the server with `fcnseg serve`")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def load_segmenter(config: ServeConfig):
    """The model a server process uses (a :class:`fcnseg.inference.Segmenter`): a checkpoint or
    export file, or published weights by name (downloaded and verified once, then cached). Also sets
    this process's torch threads, so concurrent requests share the cores instead of oversubscribing."""
    import torch

    from fcnseg.inference import Segmenter

    torch.set_num_threads(config.intra_op_threads)
    options = {"backend": config.backend, "fast": config.fast, "max_pixels": config.max_pixels,
               "threads": config.intra_op_threads}
    if config.weights is not None:
        return Segmenter.from_pretrained(config.weights, **options)
    return Segmenter.from_checkpoint(config.checkpoint, **options)
