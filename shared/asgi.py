"""Serving a FastAPI app until SIGTERM/SIGINT, with the caller's cleanup still to come.

uvicorn shuts down gracefully on SIGTERM, then restores the handler it found and raises
the signal again; with the default handler that kills the process before any
``finally`` of the caller runs (the device agent's offline message, the fleet
manager's MQTT disconnect). Installing a handler that only notes the signal makes
``serve_until_signal`` return instead, so the process exits 0 after its cleanup.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

__all__ = ["serve_until_signal"]


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
