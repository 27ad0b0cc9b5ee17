"""Opening the project's SQLite stores: one place for the folder check, the pragmas and the errors.

The cloud's session store, the fleet manager's store and the edge outbox each
keep one connection behind a lock, in autocommit mode (``isolation_level=None``:
each statement, or an explicit ``BEGIN``..``COMMIT``, is its own transaction),
with write-ahead logging so readers never block the writer. They differ only in
how durable a commit must be, so that is the one choice :func:`open_store` takes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from edgecloud.shared.base.errors import ConfigError

__all__ = ["open_store", "transaction"]


def open_store(
    path: str | Path,
    schema: str,
    *,
    what: str,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """Connect to ``path`` (``:memory:`` for a throw-away store) and apply ``schema``.

    ``synchronous="FULL"`` makes a commit wait until it is on disk (the outbox:
    committed means it survives a power cut); ``NORMAL`` can lose the last
    commits on a power cut but never corrupts the file. Raises
    :class:`ConfigError` naming ``what`` when the folder does not exist or the
    file is not a usable database.
    """
    name = str(path)
    if name != ":memory:" and not Path(name).parent.is_dir():
        raise ConfigError(f"{what} folder {Path(name).parent} does not exist")
    try:
        db = sqlite3.connect(name, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        if foreign_keys:
            db.execute("PRAGMA foreign_keys=ON")
        db.executescript(schema)
    except sqlite3.Error as exc:
        raise ConfigError(f"{what} {name} is unusable: {exc}") from exc
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
    """The statements inside as one transaction of an autocommit connection (one commit, one sync),
    rolled back on any error; ``begin="BEGIN IMMEDIATE"`` takes the write lock at once. The caller
    holds the connection's lock."""
    db.execute(begin)
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
