"""`fcnseg serve`: an HTTP API and a web page for one model.

    fcnseg serve --checkpoint runs/demo/best.pt          # .pt, .safetensors or .onnx
    -> serving fcn8s (6 classes) on http://127.0.0.1:8000
    fcnseg serve --weights fcn8s-voc                     # published weights (downloaded once)

Open the address in a browser to try the model on your own images, or call the API:
    curl -F image=@photo.jpg http://127.0.0.1:8000/predict -o mask.png
    curl -F image=@photo.jpg 'http://127.0.0.1:8000/predict?format=json'

Binds to 127.0.0.1 (this machine only) unless --host says otherwise. Requests run on a pool of
inference threads sized to the cores; a bounded number wait, the rest get 503 with Retry-After.
SIGTERM (or Ctrl-C) stops accepting connections and lets requests in flight finish.
--workers N runs N server processes, each with its own copy of the model.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import threading

from fcnseg.errors import FcnsegError

log = logging.getLogger("fcnseg.serve")


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model over HTTP: an API and a page to try it in a browser",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a .pt checkpoint, .safetensors or .onnx export")
    src.add_argument("--weights", metavar="NAME_OR_FILE",
                     help="published weights by name (e.g. fcn8s-voc; see `fcnseg weights list`), "
                          "or a .caffemodel / pytorch-fcn / torchvision .pth file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own model (uvicorn workers; default 1)")
    p.add_argument("--concurrency", type=int, default=0, metavar="N",
                   help="inference threads per process (default: cores / workers)")
    p.add_argument("--queue", type=int, default=-1, metavar="N",
                   help="requests that may wait for a thread before others get 503 (default: 16, or "
                        "4 x threads if more)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20)")
    p.add_argument("--max-pixels", type=float, default=16e6,
                   help="largest decoded image, checked before decoding (default 16e6)")
    p.add_argument("--upload-timeout", type=float, default=60.0, metavar="S",
                   help="refuse uploads still arriving after S seconds (default 60)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="default: onnxruntime for .onnx files, torch otherwise")
    p.add_argument("--no-fast", action="store_true", help="disable the bf16 fast path (fp32)")
    p.add_argument("--shutdown-timeout", type=int, default=60, metavar="S",
                   help="on SIGTERM, wait up to S seconds for requests in flight (default 60)")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.set_defaults(func=run)


class _Stopped(Exception):
    """SIGTERM arrived and uvicorn has shut down gracefully."""


def _on_sigterm(signum, frame) -> None:
    raise _Stopped()


def check_port_free(host: str, port: int) -> None:
    """One clear line when the address is taken, instead of uvicorn's log and exit status 1."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FcnsegError(f"--port {port}: {host}:{port} is already in use; choose another "
                                  "port or stop the other server") from None
            raise FcnsegError(f"--host {host} --port {port}: cannot bind ({exc.strerror}); check the "
                              "address") from None


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from fcnseg.serving.app import create_app
        from fcnseg.serving.config import ENV_VAR, ServeConfig, load_segmenter
    except ImportError as exc:
        raise FcnsegError(f"fcnseg serve needs the serve extra ({exc.name} is missing); "
                          "pip install 'fcnseg[serve]'") from None
    config = ServeConfig(checkpoint=args.checkpoint, weights=args.weights, host=args.host, port=args.port,
                         workers=args.workers, concurrency=args.concurrency, queue=args.queue,
                         max_upload_mb=args.max_upload_mb, max_pixels=int(args.max_pixels),
                         upload_timeout_s=args.upload_timeout,
                         backend=args.backend, fast=False if args.no_fast else None)
    segmenter = load_segmenter(config)  # in the parent too: a bad checkpoint fails here, on one line
    name, classes = segmenter.meta["model_name"], segmenter.num_classes
    check_port_free(config.host, config.port)
    options = {"host": config.host, "port": config.port, "timeout_graceful_shutdown": args.shutdown_timeout,
               "access_log": not args.no_access_log, "log_level": "info",
               "limit_concurrency": 64 + 4 * config.workers * (config.threads + config.waiting)}
    if config.workers > 1:
        os.environ[ENV_VAR] = config.to_env()  # the worker processes read it in app_from_env
        app = "fcnseg.serving.app:app_from_env"
        options.update(factory=True, workers=config.workers)
        del segmenter
    else:
        app = create_app(segmenter, config)
    everywhere = " (every interface)" if config.host in ("0.0.0.0", "::") else ""
    log.info("serving %s (%d classes) on %s%s", name, classes, config.url, everywhere)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:  # uvicorn finishes the requests in flight, then re-raises SIGTERM: exit 0 here, not -15
        uvicorn.run(app, **options)
    except _Stopped:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    log.info("fcnseg serve: stopped")
    return 0
