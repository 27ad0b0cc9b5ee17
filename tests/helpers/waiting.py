"""Waiting for a condition that another thread (a server, a device, a broker) brings about, a free
loopback port to start one on, and stopping the process that ran one."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "stop_process", "wait_for", "wait_until"]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """``predicate()``'s first truthy value, polled every 50 ms; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_until(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port nothing listens on (for a cloud that is down, or comes up later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen | None) -> None:
    """Terminate ``process`` if it still runs, wait for it, and close its stderr pipe."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        process.wait(10)
    if process.stderr:
        process.stderr.close()
