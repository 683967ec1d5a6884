"""`fcnseg serve`: an HTTP API and a web page for one model.

    fcnseg serve --weights runs/demo/best.pt             # any model file (--checkpoint works too)
    -> serving fcn8s (6 classes) on http://127.0.0.1:8000
    fcnseg serve --weights fcn8s-voc                     # published weights (downloaded once)

Open the address in a browser to try the model on your own images, or call the API:
    curl -F image=@photo.jpg http://127.0.0.1:8000/predict -o mask.png
    curl -F image=@photo.jpg 'http://127.0.0.1:8000/predict?format=json'

Binds to 127.0.0.1 (this machine only) unless --host says otherwise. Requests run on a pool of
inference threads sized to the cores; a bounded number wait, the rest get 503 with Retry-After.
SIGTERM (or Ctrl-C) stops accepting connections and lets requests in flight finish within
--shutdown-timeout; later ones get 503. Uploads are read before they wait for a thread, clients
have --header-timeout seconds for their headers, and only requests for this machine's addresses,
localhost, --host and --allow-host names are answered (DNS rebinding).
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

from fcnseg.cli._model_options import add_model_options
from fcnseg.errors import FcnsegError

log = logging.getLogger("fcnseg.serve")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP: an API and a page to try it in a browser",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p, backends=("torch", "onnxruntime"))
    p.add_argument("--no-fast", action="store_true", help="disable the bf16 fast path (fp32)")
    try:  # the server options: one per ServeConfig field, defaults and bounds from the field
        from fcnseg.serving.config import add_serve_arguments
    except ImportError:  # no serve extra: `run` says what to install
        p.set_defaults(func=run)
        return
    add_serve_arguments(p)
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
                raise FcnsegError(
                    f"--port {port}: {host}:{port} is already in use; choose another port or stop the other server"
                ) from None
            raise FcnsegError(f"--host {host} --port {port}: cannot bind ({exc.strerror}); check the address") from None


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from fcnseg.serving.app import create_app
        from fcnseg.serving.config import ENV_VAR, config_from_args, load_segmenter
        from fcnseg.serving.guards import GuardedH11Protocol
    except ImportError as exc:
        raise FcnsegError(
            f"fcnseg serve needs the serve extra ({exc.name} is missing); pip install 'fcnseg[serve]'"
        ) from None
    if args.mirror:  # the worker processes fetch nothing: the parent downloads before they start
        from fcnseg.weights.download import MIRROR_ENV

        os.environ[MIRROR_ENV] = args.mirror
    config = config_from_args(
        args,
        weights=args.weights,
        backend=args.backend,
        fast=False if args.no_fast else None,
    )
    segmenter = load_segmenter(config)  # in the parent too: a bad checkpoint fails here, on one line
    name, classes = segmenter.meta.model_name, segmenter.num_classes
    check_port_free(config.host, config.port)
    # the h11 protocol with a header timeout and a JSON connection limit (uvicorn's own limit is off:
    # it answers plain text without Retry-After, /health included); see fcnseg.serving.guards
    options = {
        "host": config.host,
        "port": config.port,
        "timeout_graceful_shutdown": config.shutdown_timeout,
        "access_log": config.access_log,
        "log_level": "info",
        "http": GuardedH11Protocol,
        "ws": "none",  # no websocket routes: an Upgrade request is plain HTTP and passes the Guard
        "timeout_keep_alive": max(1, min(5, int(config.header_timeout))),
    }
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
