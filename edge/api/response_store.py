"""The edge's stored responses (OpenAI's Responses API): what was asked, by which API key, and how
it ended, in SQLite, so that a background response outlives the client that created it, a daemon
restart and a cloud outage.

A record is written when the response is created and again when it ends (its final ``response``
object, and a streamed one's events, so that a replay after a restart is the same stream). Commits
are fully synced (``synchronous=FULL``): a response the daemon said it accepted survives a power
cut. The table lives in the outbox's database file; the outbox holds the query itself while the
cloud is down. Finished records beyond :data:`MAX_STORED` are forgotten, oldest first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.base.sqlite import open_store, transaction

__all__ = ["MAX_STORED", "TERMINAL", "ResponseStore", "StoredResponse"]

MAX_STORED = 10_000
"""Finished responses kept; older ones are deleted as new ones finish."""
TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
"""The statuses a response ends in; one in any other (``queued``) is still to be answered."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    created_at REAL NOT NULL,
    background INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    response TEXT,
    events TEXT,
    finished_seq INTEGER
);
CREATE INDEX IF NOT EXISTS responses_open ON responses (status, created_at);
CREATE INDEX IF NOT EXISTS responses_finished ON responses (finished_seq);
"""
_COLUMNS = "id, owner, model, created_at, background, stream, request, status, response, events"


@dataclass(frozen=True, kw_only=True)
class StoredResponse:
    id: str
    owner: str
    """Who may read or cancel it: a digest of the API key that created it ("" with no keys)."""
    model: str
    created_at: float
    background: bool
    stream: bool
    request: dict[str, Any]
    """The query and its limits, enough to run it again (see ``responses_api``)."""
    status: str = "queued"
    response: dict[str, Any] | None = None
    """The final ``response`` object once :attr:`status` is terminal."""
    events: list[dict[str, Any]] | None = None
    """A streamed response's events, once it ended."""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class ResponseStore:
    """Thread-safe; every write is on disk when it returns."""

    def __init__(self, path: str | Path) -> None:
        self._db = open_store(path, _SCHEMA, what="response store", synchronous="FULL")
        self._lock = threading.Lock()

    def add(self, record: StoredResponse) -> None:
        """Store a new response; InvalidInputError if its id is taken."""
        row = (
            record.id, record.owner, record.model, record.created_at, int(record.background), int(record.stream),
            json.dumps(record.request), record.status, _json(record.response), _json(record.events),
        )  # fmt: skip
        with self._lock:
            try:
                with transaction(self._db, "BEGIN IMMEDIATE"):
                    self._db.execute(f"INSERT INTO responses ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
                    if record.finished:
                        self._finished(record.id)
            except sqlite3.IntegrityError as exc:
                raise InvalidInputError(f"response id {record.id!r} is already used") from exc

    def finish(
        self, response_id: str, status: str, response: dict[str, Any], events: list[dict[str, Any]] | None = None
    ) -> bool:
        """Record how ``response_id`` ended; False (and nothing changed) when it had ended already,
        so a late writer (a cancelled task unwinding) cannot overwrite a cancellation."""
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a terminal status")
        with self._lock, transaction(self._db, "BEGIN IMMEDIATE"):
            changed = self._db.execute(
                "UPDATE responses SET status = ?, response = ?, events = ? WHERE id = ? AND status NOT IN (?,?,?,?)",
                (status, json.dumps(response), _json(events), response_id, *TERMINAL),
            ).rowcount
            if changed:
                self._finished(response_id)
        return bool(changed)

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM responses WHERE id = ?", (response_id,)).fetchone()
        return _record(row) if row is not None else None

    def unfinished(self) -> list[StoredResponse]:
        """The responses not yet ended, oldest first: to run again after a restart."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM responses WHERE status NOT IN (?,?,?,?) ORDER BY created_at",
                tuple(TERMINAL),
            ).fetchall()
        return [_record(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _finished(self, response_id: str) -> None:
        # Numbered in the order they finished, so the oldest finished ones are the ones forgotten.
        self._db.execute(
            "UPDATE responses SET finished_seq = (SELECT COALESCE(MAX(finished_seq), 0) + 1 FROM responses)"
            " WHERE id = ?",
            (response_id,),
        )
        self._db.execute(
            "DELETE FROM responses WHERE finished_seq <= (SELECT MAX(finished_seq) FROM responses) - ?", (MAX_STORED,)
        )


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _record(row: tuple[Any, ...]) -> StoredResponse:
    id_, owner, model, created_at, background, stream, request, status, response, events = row
    return StoredResponse(
        id=id_,
        owner=owner,
        model=model,
        created_at=created_at,
        background=bool(background),
        stream=bool(stream),
        request=json.loads(request),
        status=status,
        response=json.loads(response) if response else None,
        events=json.loads(events) if events else None,
    )
