"""What keeps `fcnseg serve` answering when clients are hostile or the process is stopping.

Two layers, each closing a class of failure for every route rather than one case:

* :class:`Guard`, an ASGI middleware around the whole app:
  - **Host allow-list**: a request whose ``Host`` header names a domain this server was not told
    about gets a one-line JSON 421, so a web page cannot reach a loopback server by DNS rebinding
    (``ServeConfig.allowed_host``: IP addresses, localhost, ``--host``, ``--allow-host``).
  - **Request limit**: beyond ``ServeConfig.max_requests`` requests at once the app itself answers
    JSON 503 with Retry-After; ``/health`` is never counted, so it answers under any load.
  - **Shutdown**: a request uvicorn cancels when ``--shutdown-timeout`` runs out gets a clean JSON
    503 (one log line) instead of a CancelledError traceback and a plain-text 500.
* :class:`GuardedH11Protocol`, uvicorn's h11 protocol with two additions (uvicorn has no header
  timeout: a connection that never finishes its headers was kept for ever):
  - **Header timeout**: a connection has ``--header-timeout`` seconds to deliver a request's
    headers, from its opening or from the previous response; otherwise it is closed.
  - **Connection limit**: beyond ``ServeConfig.max_connections`` open connections a new one gets a
    JSON 503 with Retry-After and is closed (uvicorn's own limit answers plain text, without
    Retry-After, and counts /health). The limit is above the app's request limit, so the app
    answers first, and idle connections cannot hold it longer than the header timeout.

The protocol reads its settings from the app's lifespan state (``GUARD_STATE``), which every
uvicorn worker process builds for itself in ``create_app``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("fcnseg.serve")

GUARD_STATE = "fcnseg_guard"
NOT_COUNTED = ("/health",)
CLOSE = {"Connection": "close"}  # answered without reading the body: the connection cannot be reused


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    max_connections: int


def json_error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def host_of(scope) -> str | None:
    """The host name of the request's Host header, port removed (None when there is none)."""
    for key, value in scope.get("headers", ()):
        if key == b"host":
            text = value.decode("latin-1").strip()
            if text.startswith("["):
                return text[: text.find("]") + 1] if "]" in text else text
            return text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return None


class Guard:
    """ASGI middleware: Host allow-list, the app's own request limit, clean answers at shutdown."""

    def __init__(self, app, config, retry_after) -> None:
        self.app, self.config, self.retry_after = app, config, retry_after
        self.active = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = host_of(scope)
        if host is not None and not self.config.allowed_host(host):
            log.warning("refused a request for host %r (not an allowed host name)", host[:80])
            await json_error(
                421,
                f"this server does not answer for host {host[:80]!r}; start it with "
                f"--allow-host {host[:80]} (or open it by its address)",
                CLOSE,
            )(scope, receive, send)
            return
        counted = scope["path"] not in NOT_COUNTED
        if counted and self.active >= self.config.max_requests:
            wait = self.retry_after()
            await json_error(
                503,
                f"the server is handling {self.active} requests, its limit; retry in {wait} s",
                {"Retry-After": str(wait), **CLOSE},
            )(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.active += counted
        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:  # uvicorn's graceful-shutdown timeout ran out on this request
            log.warning(
                "%s %s was still running when --shutdown-timeout ran out; answered 503", scope["method"], scope["path"]
            )
            if not started:
                await json_error(503, "the server is shutting down; retry in a moment", {"Retry-After": "5", **CLOSE})(
                    scope, receive, send
                )
        finally:
            self.active -= counted


def limits_of(protocol) -> ConnectionLimits | None:
    return (protocol.app_state or {}).get(GUARD_STATE)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a JSON connection limit (see the module)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # replaced by the JSON limit below and the app's own limit
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        limits = limits_of(self)
        if limits is None:
            return
        if len(self.connections) > limits.max_connections:
            log.warning("refused a connection: %d are open, the limit", len(self.connections) - 1)
            body = json.dumps(
                {"error": f"the server has {limits.max_connections} connections open, its limit; retry in 5 s"}
            ).encode()
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"retry-after: 5\r\nconnection: close\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            transport.close()
            return
        self._arm_header_timer(limits)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        limits = limits_of(self)
        if limits is not None and not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer(limits)  # the next request's headers get the same time

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self, limits: ConnectionLimits) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(limits.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("closed a connection that sent no complete request headers in time")
            self.transport.close()
