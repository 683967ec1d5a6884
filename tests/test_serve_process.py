"""`fcnseg serve` as a real process: startup line, graceful SIGTERM, --workers, one-line CLI errors."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="needs the serve extra")  # make test installs it

from test_serve_api import tiny_checkpoint  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint, port, *extra, env=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fcnseg", "serve", "--checkpoint", str(checkpoint), "--port", str(port), *extra]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.loads(r.read())
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not answer /health in time")


def post_image(port: int, data: bytes, query: str = "") -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict{query}", data=data, headers={"Content-Type": "image/png"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def image_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (height, width, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def slow_sender_gets_408(port: int) -> bool:
    """A client that announces 1000 bytes and sends 10 is answered 408 and its pool place is freed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"\x89PNG\r\n\x1a\n\0\0"
        )
        reply = b""
        while b"took longer" not in reply:  # headers and body may come in separate segments
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        reply = reply.decode("latin-1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        in_flight = json.loads(r.read())["in_flight"]
    assert reply.startswith("HTTP/1.1 408") and "took longer than 1 s" in reply, reply
    return in_flight == 0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve_proc") / "tiny.pt")


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(ckpt):
    port = free_port()
    proc = start_server(ckpt, port, "--no-access-log", "--upload-timeout", "1")
    try:
        wait_healthy(proc, port)
        assert slow_sender_gets_408(port)
        result = {}
        slow = threading.Thread(
            target=lambda: result.update(r=post_image(port, image_png(320, 240), "?flip=true&scales=1,1.5,2"))
        )
        slow.start()
        deadline = time.monotonic() + 60
        while True:  # send SIGTERM only once the request is inside the server
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if json.loads(r.read())["in_flight"] >= 1:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        slow.join(120)
        status, body = result["r"]
        assert status == 200
        assert Image.open(io.BytesIO(body)).size == (320, 240)  # the whole answer, not a cut connection
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"serving fcn8s (5 classes) on http://127.0.0.1:{port}" in out
    assert "Shutting down" in out and "fcnseg serve: stopped" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_workers_start_their_own_model_and_stop_on_sigterm(ckpt):
    port = free_port()
    proc = start_server(ckpt, port, "--workers", "2", "--no-access-log")
    try:
        health = wait_healthy(proc, port)
        assert health["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
        for _ in range(4):
            status, body = post_image(port, image_png(40, 30))
            assert status == 200 and Image.open(io.BytesIO(body)).size == (40, 30)
        deadline = time.monotonic() + 120
        lines = []
        while sum("Application startup complete" in line for line in lines) < 2:  # both workers up
            assert time.monotonic() < deadline, lines
            lines.append(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 0, out
    assert out.count("Started server process") == 2
    assert "Traceback" not in out


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fcnseg", "serve", *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line(ckpt, tmp_path):
    missing = run_cli("--checkpoint", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.pt" in missing.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = run_cli("--checkpoint", str(ckpt), "--port", str(busy.getsockname()[1]))
    assert taken.returncode == 2 and "already in use" in taken.stderr and "Traceback" not in taken.stderr
    assert taken.stderr.strip().splitlines()[-1].startswith("fcnseg serve: error:")
    unknown = run_cli("--weights", "no-such-weights")
    assert unknown.returncode == 2 and "no-such-weights" in unknown.stderr and "Traceback" not in unknown.stderr
    neither = run_cli("--port", "1")
    assert neither.returncode == 2 and "--checkpoint" in neither.stderr
