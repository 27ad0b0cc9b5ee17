"""Durable session records in SQLite, one file per replica: what lets a restart lose nothing accepted.

A session is written when it is accepted (its request), while it runs (its new events, in
batches: :class:`~.storage.Checkpoint`), and when it ends (its final state and full event log, in
one transaction). After a restart, finished sessions are served from here, and accepted-but-unfinished
ones are handed back with what they had streamed (:class:`~.storage.Progress`), to continue from there.
Rows are protobuf bytes from :mod:`edgecloud.shared.reasoner.wire`, so the format is the wire contract and
needs no schema of its own. A store from before checkpoints gains their table when opened.

A request id is unique per device (``UNIQUE (device_id, request_id)``): two devices may
use the same one. A store written before that (``request_id`` unique on its own, no
``device_id`` column) is migrated when opened.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgecloud.cloud.stores.storage import Checkpoint, Progress, RequestTaken, StoredSession
from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.shared.base.sqlite import open_store, transaction
from edgecloud.shared.reasoner.session import Event, SessionInfo, ThinkParams
from edgecloud.shared.reasoner.wire import (
    event_from_pb,
    event_to_pb,
    session_info_from_pb,
    session_info_to_pb,
    think_request_from_pb,
    think_request_to_pb,
)

__all__ = ["SessionStore"]

_SESSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    session_id  TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    request     BLOB NOT NULL,
    budget      INTEGER NOT NULL,
    accepted    BLOB NOT NULL,
    created_at  REAL NOT NULL,
    finished_at REAL,
    info        BLOB,
    UNIQUE (device_id, request_id)
)"""
_SCHEMA = (
    _SESSIONS_TABLE.format(name="sessions")
    + """;
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    event      BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS progress (
    session_id       TEXT PRIMARY KEY REFERENCES sessions(session_id) ON DELETE CASCADE,
    reasoning_tokens INTEGER NOT NULL,
    answer_tokens    INTEGER NOT NULL,
    hidden_reasoning TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_finished ON sessions(finished_at);
"""
)


class SessionStore:
    """The SQLite :class:`SessionStorage`. Thread-safe; one connection guarded by a lock (writes are
    small: a request, a batch of checkpoints, a finished log)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = open_store(self.path, _SCHEMA, what="session store", foreign_keys=True)
        self._migrate()

    def _migrate(self) -> None:
        """Give a store from before per-device request ids its ``device_id`` column (read from each
        stored request) and the per-device uniqueness; SQLite needs a new table for that."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        if "device_id" in columns:
            return
        rows = self._db.execute(
            "SELECT session_id, request_id, request, budget, accepted, created_at, finished_at, info FROM sessions"
        ).fetchall()
        self._db.execute("PRAGMA foreign_keys=OFF")  # events keep pointing at "sessions" through the swap
        try:
            with transaction(self._db):
                self._db.execute(_SESSIONS_TABLE.format(name="sessions_v2"))
                self._db.executemany(
                    "INSERT INTO sessions_v2 (session_id, device_id, request_id, request, budget, accepted, created_at,"
                    " finished_at, info) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r[0], pb.ThinkRequest.FromString(r[2]).device_id, *r[1:]) for r in rows],
                )
                self._db.execute("DROP TABLE sessions")
                self._db.execute("ALTER TABLE sessions_v2 RENAME TO sessions")
                self._db.execute("CREATE INDEX IF NOT EXISTS sessions_finished ON sessions(finished_at)")
        finally:
            self._db.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def accept(self, session_id: str, params: ThinkParams, budget: int, accepted: Event) -> None:
        request = think_request_to_pb(params).SerializeToString()
        first = event_to_pb(accepted).SerializeToString()
        try:
            with self._lock, transaction(self._db):
                self._db.execute(
                    "INSERT INTO sessions (session_id, device_id, request_id, request, budget, accepted, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (session_id, params.device_id, params.request_id, request, budget, first, time.time()),
                )
                self._db.execute(
                    "INSERT INTO events (session_id, seq, event) VALUES (?, ?, ?)", (session_id, accepted.seq, first)
                )
        except sqlite3.IntegrityError:
            taken = self.find_request(params.request_id, params.device_id)
            if taken is None or taken.session_id == session_id:
                raise
            raise RequestTaken(taken.session_id) from None

    def append(self, checkpoints: Sequence[Checkpoint]) -> None:
        rows = [
            (c, [(c.session_id, e.seq, event_to_pb(e).SerializeToString()) for e in c.events]) for c in checkpoints
        ]  # serialized before taking the lock
        with self._lock, transaction(self._db):
            for checkpoint, events in rows:
                open_ = self._db.execute(
                    "SELECT 1 FROM sessions WHERE session_id = ? AND finished_at IS NULL", (checkpoint.session_id,)
                ).fetchone()
                if open_ is None:
                    continue
                self._db.executemany("INSERT INTO events (session_id, seq, event) VALUES (?, ?, ?)", events)
                self._db.execute(
                    "INSERT INTO progress (session_id, reasoning_tokens, answer_tokens, hidden_reasoning)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET"
                    " reasoning_tokens = excluded.reasoning_tokens, answer_tokens = excluded.answer_tokens,"
                    " hidden_reasoning = progress.hidden_reasoning || excluded.hidden_reasoning",
                    (
                        checkpoint.session_id,
                        checkpoint.reasoning_tokens,
                        checkpoint.answer_tokens,
                        checkpoint.hidden_reasoning,
                    ),
                )

    def finish(self, info: SessionInfo, events: list[Event]) -> None:
        rows = [(info.session_id, e.seq, event_to_pb(e).SerializeToString()) for e in events]
        with self._lock, transaction(self._db):
            self._db.execute(
                "UPDATE sessions SET finished_at = ?, info = ? WHERE session_id = ?",
                (time.time(), session_info_to_pb(info).SerializeToString(), info.session_id),
            )
            self._db.execute("DELETE FROM events WHERE session_id = ?", (info.session_id,))
            self._db.execute("DELETE FROM progress WHERE session_id = ?", (info.session_id,))  # nothing to resume
            self._db.executemany("INSERT INTO events (session_id, seq, event) VALUES (?, ?, ?)", rows)

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def expire(self, finished_before: float) -> int:
        """Delete sessions that finished before the given time; returns how many."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM sessions WHERE finished_at IS NOT NULL AND finished_at < ?", (finished_before,)
            ).rowcount

    def _row(self, row: tuple) -> StoredSession:
        session_id, request, budget, accepted, created_at, info = row
        return StoredSession(
            session_id=session_id,
            params=think_request_from_pb(pb.ThinkRequest.FromString(request)),
            budget=budget,
            accepted=event_from_pb(pb.ThinkEvent.FromString(accepted)),
            created_at=created_at,
            info=session_info_from_pb(pb.SessionInfo.FromString(info)) if info is not None else None,
        )

    _COLUMNS = "session_id, request, budget, accepted, created_at, info"

    def get(self, session_id: str) -> StoredSession | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return self._row(row) if row else None

    def find_request(self, request_id: str, device_id: str = "") -> StoredSession | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM sessions WHERE device_id = ? AND request_id = ?", (device_id, request_id)
            ).fetchone()
        return self._row(row) if row else None

    def events(self, session_id: str) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event FROM events WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        return [event_from_pb(pb.ThinkEvent.FromString(r[0])) for r in rows]

    def progress(self, session_id: str) -> Progress:
        with self._lock:  # the events and the counts of one checkpoint
            accepted = self._db.execute("SELECT accepted FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            events = self._db.execute(
                "SELECT event FROM events WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
            row = self._db.execute(
                "SELECT reasoning_tokens, answer_tokens, hidden_reasoning FROM progress WHERE session_id = ?",
                (session_id,),
            ).fetchone()
        log = [event_from_pb(pb.ThinkEvent.FromString(r[0])) for r in events]
        if accepted is not None and (not log or log[0].seq != 1):  # accepted by a store that kept no log until the end
            log.insert(0, event_from_pb(pb.ThinkEvent.FromString(accepted[0])))
        return Progress(log, *row) if row else Progress(log)

    def unfinished(self) -> Iterator[StoredSession]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM sessions WHERE finished_at IS NULL ORDER BY created_at"
            ).fetchall()
        return (self._row(r) for r in rows)

    def completed(self, limit: int) -> Iterator[StoredSession]:
        """The newest finished sessions, to warm the result cache."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM sessions WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return (self._row(r) for r in rows)
