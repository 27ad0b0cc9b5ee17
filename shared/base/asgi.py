"""Serving an ASGI app: until a signal in a process of its own, or on a thread beside other work.

:func:`serve_until_signal` is for the daemons' main thread. uvicorn shuts down gracefully on SIGTERM, then restores the handler it found and raises
the signal again; with the default handler that kills the process before any
``finally`` of the caller runs (the device agent's offline message, the fleet
manager's MQTT disconnect). Installing a handler that only notes the signal makes
``serve_until_signal`` return instead, so the process exits 0 after its cleanup.

:class:`ThreadedServer` runs uvicorn on a daemon thread and reports the port it
bound (port 0 picks a free one): the fleet manager's embedded API, and every
test or benchmark that needs a real HTTP server on loopback.

:class:`InboundGuard` is the one gate every HTTP server's requests pass before any route: the
API key, the declared media type and the body's size are checked on the headers, before a byte of
the body is read, and the size again on the bytes actually read (a chunked body declares none).
"""

from __future__ import annotations

import hmac
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

from edgecloud.shared.base.errors import EdgecloudError, UnavailableError

__all__ = [
    "Inbound",
    "InboundGuard",
    "ThreadedServer",
    "error_body",
    "error_response",
    "presented_key",
    "response_for",
    "serve_until_signal",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(kind: str, message: str) -> dict[str, Any]:
    """The HTTP APIs' error body, ``{"error": {"type": kind, "message": message}}``: of a JSON
    response, and of an error event in a stream."""
    return {"error": {"type": kind, "message": message}}


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> Any:  # starlette's JSONResponse
    """A response with :func:`error_body`."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


def response_for(error: EdgecloudError) -> Any:
    """The error response for a deliberate error: status and type from the table in
    :mod:`edgecloud.shared.base.errors`."""
    return error_response(error.http_status, error.code, str(error))


@dataclass(frozen=True, kw_only=True)
class Inbound:
    """What one request must bring before its body is read (see :class:`InboundGuard`)."""

    max_body_bytes: int
    """The most body bytes read; a longer body, declared or chunked, gets 413."""
    keys: tuple[str, ...] = ()
    """The keys it may present, one of them, as ``Authorization: Bearer <key>`` or ``X-API-Key:
    <key>``; empty: none needed."""
    media_types: frozenset[str] | None = None
    """The ``Content-Type`` media types it may declare (415 otherwise, an absent one included);
    None: any. Requiring ``application/json`` stops a cross-site form or a no-CORS ``fetch``."""
    error_body: Callable[[int, str, str], dict[str, Any]] | None = None
    """The body of a refusal from ``(status, kind, message)``, for routes whose clients expect another
    shape (OpenAI's); None: the APIs' own ``{"error": {"type", "message"}}``."""


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:]
    return headers.get("x-api-key", "")


class InboundGuard:
    """Pure-ASGI middleware: authentication, media type and a body bound, before the app reads a byte.

    ``policy(method, path)`` says what each request needs (:class:`Inbound`). In this order: a wrong
    or missing key gets 401 (with ``WWW-Authenticate: Bearer``), a media type outside the allowed
    ones 415, a ``Content-Length`` over the bound 413, all without reading the body. The body the app
    then reads is counted as it arrives, chunked or not: the byte past the bound answers 413 and the
    app sees the client gone, so no route ever holds more than ``max_body_bytes`` of it. Errors have
    the APIs' shape, ``{"error": {"type", "message"}}``.
    """

    def __init__(self, app: ASGIApp, policy: Callable[[str, str], Inbound]) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.policy(scope["method"], scope["path"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        refusal = _refusal(rule, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._bounded(scope, receive, send, rule)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, rule: Inbound) -> None:
        limit = rule.max_body_bytes
        read = 0
        started = refused = False

        async def counted_receive() -> Message:
            nonlocal read, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    refused = True
                    if not started:
                        await _too_large(rule)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; whatever the app answers to the cut body does not
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # an app's reaction to a body cut at the bound is not an error of its own


def _refused(rule: Inbound, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Any:
    """A refusal that also closes the connection: the server then reads no more of a body it did not want
    (on a kept-alive connection it would read, and drop, all of it to find the next request)."""
    closing = {**(headers or {}), "Connection": "close"}
    if rule.error_body is None:
        return error_response(status, kind, message, closing)
    from starlette.responses import JSONResponse

    return JSONResponse(rule.error_body(status, kind, message), status_code=status, headers=closing)


def _too_large(rule: Inbound) -> Any:
    return _refused(rule, 413, "request_too_large", f"request body over {rule.max_body_bytes} bytes")


def _known_key(presented: bytes, keys: tuple[str, ...]) -> bool:
    # Every key is compared (in constant time), so the time taken says nothing of which one matched.
    return sum(hmac.compare_digest(presented, key.encode()) for key in keys) > 0


def _refusal(rule: Inbound, headers: dict[str, str]) -> Any | None:
    """The response refusing a request on its headers alone, or None when they pass."""
    if rule.keys and not _known_key(presented_key(headers).encode(), rule.keys):
        return _refused(rule, 401, "unauthenticated", "missing or invalid API key", {"WWW-Authenticate": "Bearer"})
    if rule.media_types is not None:
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in rule.media_types:
            allowed = ", ".join(sorted(rule.media_types))
            return _refused(rule, 415, "unsupported_media_type", f"Content-Type must be {allowed}, got {media!r}")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            return _refused(rule, 400, "invalid_input", f"bad Content-Length {length[:40]!r}")
        if int(length) > rule.max_body_bytes:
            return _too_large(rule)
    return None


def _noted(_signum: int, _frame: FrameType | None) -> None:
    """uvicorn already shut down when it re-raises the signal into this."""


def serve_until_signal(app: Any, *, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    previous = {sig: signal.signal(sig, _noted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ThreadedServer:
    """uvicorn serving ``app`` on its own daemon thread; ``start`` returns once it listens."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lifespan: Literal["on", "off", "auto"] = "auto",
        name: str = "asgi-server",
    ) -> None:
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan=lifespan))
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self.name = name
        self.host = host
        self.port = 0
        """The bound port, once started."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> int:
        """Start serving; returns the bound port. Raises UnavailableError if it does not listen in time."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise UnavailableError(f"{self.name} did not start listening on {self.host} within {timeout:.0f} s")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the requests in flight (graceful shutdown) and join the thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
