"""Load on `fcnseg serve`: 300 requests from 8 concurrent loopback clients against the demo model.

    python benchmarks/bench_serve.py [--checkpoint runs/demo/best.pt] [--requests 300] [--clients 8]
                                     [--variants default,workers2,concurrency1] [--rounds 3]

Each variant is a `fcnseg serve` process (started once, all alive together, idle while another is
measured). The requests are split into --rounds rounds and the variants take turns round by round,
so a change in the machine's load hits them alike. Every client holds one keep-alive connection
and POSTs PNG images from the `shapes` val split (96x96, as the demo model was trained on), asking
for the index-mask PNG. Reported per variant: requests/s, p50/p95/p99 latency, errors (anything
but a 200 with a PNG of the right size) and peak RSS of the server's processes (VmHWM summed over
the process and its children).

Without a checkpoint it first trains the demo model (`fcnseg demo --out runs/demo`, about 1.5 min
on 2 idle cores).
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = {
    "default": [],  # 1 process, one inference thread per core
    "workers2": ["--workers", "2"],  # 2 processes, each one thread per core it gets
    "concurrency1": ["--concurrency", "1"],  # 1 process, 1 inference thread using every core
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_peak_rss_mb(pid: int) -> float:
    """VmHWM of ``pid`` and all its descendants (uvicorn's workers), in MB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def start(checkpoint: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "fcnseg",
        "serve",
        "--checkpoint",
        checkpoint,
        "--port",
        str(port),
        "--no-access-log",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server {extra} exited: {proc.stderr.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server {extra} did not start")


def load_images(count: int) -> list[tuple[bytes, tuple[int, int]]]:
    from fcnseg.data import load_dataset

    dataset = load_dataset("shapes", "val")
    images = []
    for i in range(min(count, len(dataset))):
        image, _ = dataset[i]  # uint8 3 x H x W
        arr = np.asarray(image).transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, "PNG")
        images.append((buf.getvalue(), (arr.shape[1], arr.shape[0])))
    return images


def hammer(port: int, images, requests: int, clients: int) -> tuple[list[float], int, float]:
    """``requests`` POSTs from ``clients`` threads; (latencies in s, errors, wall seconds)."""
    latencies, errors = [], []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, size = images[i % len(images)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200 and Image.open(io.BytesIO(data)).size == size
            except Exception:  # noqa: BLE001 - every failure counts as an error
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors.append(i)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start_t = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(errors), time.perf_counter() - start_t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/demo/best.pt")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="default,workers2,concurrency1")
    parser.add_argument("--json", help="also write the results as JSON")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [n for n in names if n not in VARIANTS]:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    if not Path(args.checkpoint).is_file():
        out = Path(args.checkpoint).parent
        print(f"{args.checkpoint} missing: training the demo model first (fcnseg demo --out {out})", flush=True)
        subprocess.run([sys.executable, "-m", "fcnseg", "demo", "--out", str(out)], check=True)

    images = load_images(20)
    cores = len(os.sched_getaffinity(0))
    print(
        f"model {args.checkpoint}; {len(images)} shapes val images "
        f"{images[0][1][0]}x{images[0][1][1]} PNG; {args.requests} requests per variant from {args.clients} "
        f"keep-alive loopback clients; {cores} cores; load average {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )

    servers = {name: start(args.checkpoint, VARIANTS[name]) for name in names}
    results = {name: {"latencies": [], "errors": 0, "wall": 0.0} for name in names}
    try:
        for _, port in servers.values():  # warm-up: first calls allocate, not measured
            hammer(port, images, 2 * args.clients, args.clients)
        per_round = [args.requests // args.rounds + (r < args.requests % args.rounds) for r in range(args.rounds)]
        for n in per_round:
            for name, (_, port) in servers.items():
                lat, err, wall = hammer(port, images, n, args.clients)
                results[name]["latencies"] += lat
                results[name]["errors"] += err
                results[name]["wall"] += wall
        for name, (proc, _) in servers.items():
            results[name]["peak_rss_mb"] = tree_peak_rss_mb(proc.pid)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    print("\n| server | requests | req/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for name in names:
        r = results[name]
        lat_ms = np.asarray(r["latencies"]) * 1000
        p50, p95, p99 = np.percentile(lat_ms, [50, 95, 99])
        rows[name] = {
            "args": VARIANTS[name],
            "requests": len(lat_ms),
            "rps": len(lat_ms) / r["wall"],
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "errors": r["errors"],
            "peak_rss_mb": r["peak_rss_mb"],
        }
        label = f"`{' '.join(VARIANTS[name])}`" if VARIANTS[name] else "default"
        print(
            f"| {label} | {len(lat_ms)} | {rows[name]['rps']:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} | "
            f"{r['errors']} | {r['peak_rss_mb']:.0f} |"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        from fcnseg.files import write_json

        write_json(args.json, rows)
    return 1 if any(r["errors"] for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
