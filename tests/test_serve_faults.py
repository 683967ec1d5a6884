"""`fcnseg serve` under hostile clients and signals, as a real process on 127.0.0.1: stalled and
abandoned uploads, slow headers, foreign Host headers (DNS rebinding), more connections than the
limits, SIGTERM with requests in flight. Every fault here really happens on a socket or a signal."""

from __future__ import annotations

import json
import math
import select
import signal
import socket
import threading
import time
import urllib.request

import pytest

pytest.importorskip("uvicorn", reason="needs the serve extra")  # make test installs it

from test_serve_api import tiny_checkpoint  # noqa: E402
from test_serve_process import free_port, image_png, post_image, start_server, wait_healthy  # noqa: E402

HEADER_TIMEOUT = 4  # seconds; also how long an upload may pause


def raw_socket(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def stalled_upload(port: int) -> socket.socket:
    """Headers and the first bytes of a 100 kB body, then nothing."""
    sock = raw_socket(port)
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        b"Content-Length: 100000\r\n\r\n" + b"\x89PNG\r\n\x1a\n" + b"\0" * 1000
    )
    return sock


def read_reply(sock: socket.socket) -> bytes:
    reply = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        reply += chunk
    return reply


def raw_request(port: int, request: bytes) -> tuple[int, dict, bytes]:
    with raw_socket(port) as sock:
        sock.sendall(request)
        reply = read_reply(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve_faults") / "tiny.pt")


@pytest.fixture(scope="module")
def server(ckpt):
    """One inference thread, no waiting line: the app's request limit is 2 x 1 + 16 = 18, the
    connection limit 18 + 64 = 82. Yields (port, log lines so far)."""
    port = free_port()
    proc = start_server(
        ckpt,
        port,
        "--no-access-log",
        "--concurrency",
        "1",
        "--queue",
        "0",
        "--header-timeout",
        str(HEADER_TIMEOUT),
        "--upload-timeout",
        "30",
    )
    wait_healthy(proc, port)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    yield port, log
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(10)
    out = "".join(log)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "Exception in ASGI" not in out, out


def test_stalled_uploads_do_not_starve_a_normal_client(server):
    port, _ = server
    stalls = [stalled_upload(port) for _ in range(12)]  # 12 > the pool's one thread and no waiting line
    try:
        time.sleep(0.5)  # all twelve are inside the server, reading bodies
        assert health(port)["in_flight"] == 0  # none of them holds a pool place
        start = time.monotonic()
        status, body = post_image(port, image_png(40, 30))
        took = time.monotonic() - start
        assert status == 200, body
        assert took < HEADER_TIMEOUT - 1, took
        # the stalled uploads were still open and unanswered when the normal client was served
        readable, _, _ = select.select(stalls, [], [], 0)
        assert readable == []
        # and then each gets its own 408 once it has paused longer than the timeout
        replies = [read_reply(s) for s in stalls]
    finally:
        for s in stalls:
            s.close()
    assert all(r.startswith(b"HTTP/1.1 408") and b"no bytes of the upload arrived" in r for r in replies), replies[0]


def test_client_hanging_up_mid_upload_leaves_no_traceback(server):
    port, log = server
    before = len(log)
    for _ in range(3):
        sock = stalled_upload(port)  # half a body, then the client goes away
        sock.close()
    time.sleep(0.5)
    status, _ = post_image(port, image_png(40, 30))
    assert status == 200
    new = "".join(log[before:])
    assert "Traceback" not in new and "Exception" not in new, new
    assert new.count("\n") <= 3  # at most one line per abandoned upload


def test_headers_sent_one_byte_a_second_get_the_connection_closed(server):
    port, _ = server
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    start = time.monotonic()
    closed_after = None
    with raw_socket(port) as sock:
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - start
                break
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable and sock.recv(1024) == b"":
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None, "the server kept a connection whose headers never ended"
    assert HEADER_TIMEOUT - 0.5 < closed_after < HEADER_TIMEOUT + 3, closed_after
    # a connection that sends nothing at all is closed too
    with raw_socket(port) as sock:
        start = time.monotonic()
        assert read_reply(sock) == b""
        assert time.monotonic() - start < HEADER_TIMEOUT + 3


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io"])
def test_foreign_host_header_is_refused(server, host):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1."""
    port, _ = server
    status, headers, body = raw_request(
        port, f"GET /model HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    assert status == 421 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert "--allow-host" in error and "\n" not in error
    png = image_png(20, 20)
    status, _, _ = raw_request(
        port,
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(png)}\r\nConnection: close\r\n\r\n".encode()
        + png,
    )
    assert status == 421


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "192.168.1.7"])
def test_own_names_and_addresses_are_answered(server, host):
    port, _ = server
    status, _, body = raw_request(
        port, f"GET /model HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    )
    assert status == 200 and json.loads(body)["model"] == "fcn8s"


def test_beyond_the_limits_answers_are_json_with_retry_after_and_health_still_answers(server):
    port, _ = server
    uploads = [stalled_upload(port) for _ in range(18)]  # the app's request limit
    extra = []
    try:
        time.sleep(0.5)
        status, headers, body = raw_request(
            port,
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: image/png\r\nContent-Length: 4\r\n"
            b"Connection: close\r\n\r\nabcd",
        )
        assert status == 503 and headers["content-type"] == "application/json", body
        assert int(headers["retry-after"]) >= 1 and "limit" in json.loads(body)["error"]
        assert health(port)["status"] == "ok"  # /health is not counted
        # connections beyond the connection limit (82) are answered at once, in JSON
        extra = [raw_socket(port) for _ in range(82 - 18 + 1)]
        time.sleep(0.3)
        status, headers, body = raw_request(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 503 and headers["content-type"] == "application/json"
        assert headers["retry-after"] == "5" and "connections" in json.loads(body)["error"]
    finally:
        for s in uploads + extra:
            s.close()
    time.sleep(0.5)
    assert health(port)["status"] == "ok"


@pytest.mark.slow
def test_sigterm_honours_the_shutdown_timeout(ckpt):
    """Requests queued on one thread (enough of them to need 3x the timeout, however fast this CPU's
    path is), SIGTERM with --shutdown-timeout 1: the process exits within the timeout plus the one
    inference running (plus the interpreter's own exit, ~2.5 s on a busy machine), every client gets
    200 or a JSON 503, and the queued work is not run."""
    port = free_port()
    proc = start_server(ckpt, port, "--no-access-log", "--concurrency", "1", "--queue", "64", "--shutdown-timeout", "1")
    try:
        wait_healthy(proc, port)
        data = image_png(400, 300)
        assert post_image(port, data, "?flip=true&scales=1,1.5,2")[0] == 200  # a new size's first pass is slower
        start = time.monotonic()
        status, _ = post_image(port, data, "?flip=true&scales=1,1.5,2")
        one = time.monotonic() - start  # one (warm) inference here, now
        assert status == 200
        results = []
        queued = min(40, max(8, math.ceil(3 / one)))  # the queue outlasts the 1 s timeout threefold
        clients = [
            threading.Thread(target=lambda: results.append(post_image(port, data, "?flip=true&scales=1,1.5,2")))
            for _ in range(queued)
        ]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 60
        while health(port)["in_flight"] < queued:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, _ = proc.communicate(timeout=120)
        took = time.monotonic() - start
        for c in clients:
            c.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert took < 1 + one + 5, (took, one, out)
    statuses = sorted(s for s, _ in results)
    assert len(statuses) == queued and set(statuses) <= {200, 503}, statuses
    assert 503 in statuses, (took, one, out)
    for status, body in results:
        if status == 503:
            assert "shutting down" in json.loads(body)["error"]
    assert "Traceback" not in out and "CancelledError" not in out, out
    assert "fcnseg serve: stopped" in out
