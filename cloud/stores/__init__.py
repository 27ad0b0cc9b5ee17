"""Where sessions are kept: the storage contract, the embedded SQLite store and the shared Redis store.

:func:`open_session_store` picks one from ``cloud serve --store``: a ``redis://`` or ``rediss://``
URL opens the shared store (every replica on it serves every session), anything else is a SQLite
file (or ``:memory:``), one per replica.
"""

from __future__ import annotations

from pathlib import Path

from edgecloud.cloud.stores.sqlite_store import SessionStore
from edgecloud.cloud.stores.storage import (
    Checkpoint,
    Progress,
    RequestTaken,
    SessionStorage,
    SharedSessionStorage,
    StoredSession,
)

__all__ = [
    "Checkpoint",
    "Progress",
    "RequestTaken",
    "SessionStorage",
    "SessionStore",
    "SharedSessionStorage",
    "StoredSession",
    "is_shared_store",
    "open_session_store",
]

_SHARED_SCHEMES = ("redis://", "rediss://", "unix://")


def is_shared_store(spec: str | Path) -> bool:
    """Whether ``--store`` names a shared (Redis) store rather than a SQLite file."""
    return isinstance(spec, str) and spec.startswith(_SHARED_SCHEMES)


def open_session_store(
    spec: str | Path, *, lease_s: float = 5.0, replica: str | None = None, password: str | None = None
) -> SessionStorage:
    """The store ``spec`` names: a Redis URL (shared by replicas) or a SQLite path."""
    if is_shared_store(spec):
        from edgecloud.cloud.stores.redis_store import RedisSessionStore  # redis-py only where it is used

        return RedisSessionStore(str(spec), lease_s=lease_s, replica=replica, password=password)
    return SessionStore(spec)
