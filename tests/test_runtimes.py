"""fcnseg.inference.runtimes: OpenVINO's compile keeps the caller's alternate signal stack."""

import ctypes
import signal
import subprocess
import sys

import pytest

from fcnseg.inference import runtimes

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack's layout is glibc's")


def _current_stack() -> tuple:
    now = runtimes._SignalStack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(now)) == 0
    return now.ss_sp, now.ss_flags, now.ss_size


@linux_only
def test_a_library_that_swaps_the_signal_stack_leaves_the_callers_in_place():
    """What OpenVINO's compile does (installs its own stack) is undone when the block ends, and a
    Python signal handler (installed with SA_ONSTACK) still runs."""
    before = _current_stack()
    buffer = ctypes.create_string_buffer(64 * 1024)
    theirs = runtimes._SignalStack(ctypes.cast(buffer, ctypes.c_void_p), 0, len(buffer))
    with runtimes._signal_stack_kept():
        assert ctypes.CDLL(None).sigaltstack(ctypes.byref(theirs), None) == 0
        assert _current_stack()[0] == ctypes.cast(buffer, ctypes.c_void_p).value
    assert _current_stack() == before
    del buffer  # had it stayed installed, the next handler would run on freed memory
    ran = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: ran.append(True))
    try:
        signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert ran == [True]


OPENVINO_RELEASE_ORDER = """
import gc, os, signal
from fcnseg.inference import runtimes
from fcnseg.inference.export import onnx_bytes
from fcnseg.models import create_model

model = create_model("fcn8s", 3, width=1 / 16).eval()
data = onnx_bytes(model, {"model_name": "fcn8s", "model_kwargs": {"num_classes": 3}})
first, second = runtimes.load("openvino", data), runtimes.load("openvino", data)
del first  # released first to last: OpenVINO alone then leaves the first model's freed stack in place
gc.collect()
del second
gc.collect()
ran = []
signal.signal(signal.SIGUSR1, lambda *_: ran.append(1))
os.kill(os.getpid(), signal.SIGUSR1)
print("handled", ran)
"""


@linux_only
def test_openvino_models_released_in_any_order_leave_signals_working():
    """The whole-suite segfault with OpenVINO installed: exit 139 at the next signal before the fix."""
    pytest.importorskip("openvino")
    done = subprocess.run([sys.executable, "-c", OPENVINO_RELEASE_ORDER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "handled [1]" in done.stdout, (done.returncode, done.stderr[-2000:])
