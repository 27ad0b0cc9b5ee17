"""Serving an ASGI app: until a signal in a process of its own, or on a thread beside other work.

:func:`serve_until_signal` is for the daemons' main thread. uvicorn shuts down gracefully on SIGTERM, then restores the handler it found and raises
the signal again; with the default handler that kills the process before any
``finally`` of the caller runs (the device agent's offline message, the fleet
manager's MQTT disconnect). Installing a handler that only notes the signal makes
``serve_until_signal`` return instead, so the process exits 0 after its cleanup.

:class:`ThreadedServer` runs uvicorn on a daemon thread and reports the port it
bound (port 0 picks a free one): the fleet manager's embedded API, and every
test or benchmark that needs a real HTTP server on loopback.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any, Literal

from edgecloud.shared.errors import EdgecloudError, UnavailableError

__all__ = ["ThreadedServer", "error_response", "response_for", "serve_until_signal"]


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> Any:  # starlette's JSONResponse
    """The HTTP APIs' error body, ``{"error": {"type": kind, "message": message}}``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def response_for(error: EdgecloudError) -> Any:
    """The error response for a deliberate error: status and type from the table in :mod:`edgecloud.shared.errors`."""
    return error_response(error.http_status, error.code, str(error))


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
