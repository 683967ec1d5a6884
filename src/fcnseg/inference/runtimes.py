"""Runtimes for exported models (fp32 ONNX exports and int8 models from `fcnseg quantize`):
onnxruntime's CPU provider and OpenVINO (optional extra ``[openvino]``).

Each loader returns a function: normalised float32 batch (N, 3, H, W) -> float32 scores (N, C, H, W),
any H and W (dynamic shapes). OpenVINO compiles for this CPU with its default settings, which on a
CPU with AVX512-BF16 or AMX run fp32 models in bf16 and int8 models on the VNNI/AMX int8 units.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import sys
from collections.abc import Callable, Iterator

import torch

from fcnseg.errors import FcnsegError

RUNTIMES = ("onnxruntime", "openvino")
Run = Callable[[torch.Tensor], torch.Tensor]


def installed(runtime: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(runtime) is not None


def onnxruntime_session(model_bytes: bytes, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session. ``spinning=False``: its threads sleep between runs instead of
    spinning for work (onnxruntime's default), for sessions that run in turn on the same cores (the
    int8 pad cache's head and rest graphs: a spinning head's threads take cores from the rest graph).
    FCN-8s VGG16 int8 at 500x500 on 2 EPYC cores (AVX512-VNNI), three alternating processes:
    186-210 ms without spinning, 221-226 ms with it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise FcnsegError("the onnxruntime backend needs the onnx extra; pip install 'fcnseg[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def load(runtime: str, model_bytes: bytes, threads: int | None = None) -> Run:
    """A scoring function for ``model_bytes`` (ONNX, input "image", output "scores") on ``runtime``."""
    if runtime == "onnxruntime":  # int8 models with a Caffe-padded trunk get per-size head graphs
        from fcnseg.inference.int8_padcache import PadCachedInt8

        return PadCachedInt8(model_bytes, lambda data: onnxruntime_session(data, threads, spinning=False))
    if runtime == "openvino":
        try:
            import openvino as ov
        except ImportError:
            raise FcnsegError(
                "the openvino backend needs the openvino extra; pip install 'fcnseg[openvino]' "
                "or use --backend onnxruntime"
            ) from None
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        compiled = openvino_compile(core, core.read_model(io.BytesIO(model_bytes)), config)
        request, output = compiled.create_infer_request(), compiled.output(0)
        return lambda x: torch.from_numpy(request.infer({"image": x.float().contiguous().numpy()})[output].copy())
    raise FcnsegError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def openvino_compile(core, model, config: dict):
    """``core.compile_model(model, "CPU", config)`` with the calling thread's signal stack kept.

    OpenVINO's CPU plugin (2026.4) installs its own alternate signal stack (sigaltstack) when it
    compiles a model and puts back the one it found when that model is released. Released in any
    order but the reverse of compiling, the thread is left with a stack that has been freed, and the
    next signal handled there (Ctrl-C, SIGTERM, a child's SIGCHLD: Python installs its handlers with
    SA_ONSTACK) kills the process with SIGSEGV. Measured: two models compiled and released first to
    last, then one SIGUSR1 -> exit 139. Putting the caller's stack back right after compiling means
    every model saves, and later restores, that same live stack."""
    with _signal_stack_kept():
        return core.compile_model(model, "CPU", config)


class _SignalStack(ctypes.Structure):
    """glibc's ``stack_t``."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _signal_stack_kept() -> Iterator[None]:
    """The calling thread's alternate signal stack as it was before the block (Linux: elsewhere the
    structure's layout differs, and nothing is done)."""
    sigaltstack = getattr(ctypes.CDLL(None), "sigaltstack", None) if sys.platform.startswith("linux") else None
    saved = _SignalStack()
    if sigaltstack is None or sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        sigaltstack(ctypes.byref(saved), None)
