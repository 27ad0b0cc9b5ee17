"""The durable outbox: requests that insisted on the cloud while it was unreachable.

:meth:`Outbox.add` commits the request (its ``ThinkRequest`` bytes, via
:mod:`edgecloud.shared.reasoner.wire`) to SQLite before it returns, so nothing accepted is lost
when the daemon restarts. :class:`OutboxDeliverer` sends pending records to the
cloud in the background, oldest first; the cloud's idempotency by
``request_id`` makes a delivery that is repeated after a crash harmless.

A record is ``pending`` until the cloud completes it (``delivered``, with the
answer and usage) or refuses it for good (``failed``, e.g. INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

from edgecloud.edge.seams import CloudReasoner
from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.shared.base.errors import ConfigError, EdgecloudError, InvalidInputError, NotFoundError
from edgecloud.shared.base.sqlite import open_store
from edgecloud.shared.reasoner.session import Event, EventKind, ThinkParams, Usage
from edgecloud.shared.reasoner.wire import think_request_from_pb, think_request_to_pb

__all__ = ["DELIVERED", "FAILED", "PENDING", "Outbox", "OutboxDeliverer", "OutboxRecord", "OutboxStorage"]

log = logging.getLogger(__name__)

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    request_id TEXT PRIMARY KEY,
    request BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    delivered_at REAL,
    session_id TEXT,
    answer TEXT,
    input_tokens INTEGER,
    reasoning_tokens INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    failure TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, created_at);
"""

_COLUMNS = (
    "request_id, request, status, attempts, last_error, created_at, delivered_at, session_id, answer,"
    " input_tokens, reasoning_tokens, output_tokens, cached_tokens, failure"
)


@dataclass(frozen=True)
class OutboxRecord:
    request_id: str
    params: ThinkParams
    status: str
    """``pending``, ``delivered`` or ``failed``."""
    attempts: int
    last_error: str | None
    created_at: float
    """Unix time."""
    delivered_at: float | None
    session_id: str | None
    answer: str | None
    usage: Usage | None
    failure: str | None
    """Why the cloud refused it for good (status ``failed``)."""


@runtime_checkable
class OutboxStorage(Protocol):
    """What :class:`EdgeService` and :class:`OutboxDeliverer` need from the outbox's storage.

    :class:`Outbox` (SQLite, fully synced) is the shipped one; a device with a store of its own
    (a platform key-value store, a shared database behind several daemons) plugs in here. Every
    method may be called from any thread, and a write is durable when it returns.
    """

    def add(self, params: ThinkParams) -> OutboxRecord:
        """The record for ``params``, accepted (PENDING) before this returns. Idempotent by
        ``request_id``; InvalidInputError when that id was used for another query."""

    def get(self, request_id: str) -> OutboxRecord | None:
        """The record, or None when the id was never accepted."""

    def pending(self, limit: int = 100) -> list[OutboxRecord]:
        """Up to ``limit`` PENDING records, oldest first."""

    def mark_delivered(self, request_id: str, completed: Event) -> None:
        """Store the cloud's answer; InvalidInputError unless ``completed`` is a COMPLETED event."""

    def mark_failed(self, request_id: str, failure: str) -> None:
        """The cloud refused the request for good; it is not retried."""

    def record_attempt(self, request_id: str, error: str) -> None:
        """Count a delivery attempt that failed for a reason worth retrying."""

    def depth(self) -> int:
        """How many records are PENDING."""

    def close(self) -> None:
        """Release the storage; no method may be called afterwards."""


class Outbox:
    """SQLite-backed, thread-safe (one connection behind a lock), WAL with full sync."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = open_store(self.path, _SCHEMA, what="outbox", synchronous="FULL")  # committed means on disk

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add(self, params: ThinkParams) -> OutboxRecord:
        """Accept a request, committed before this returns. Idempotent by request_id;
        InvalidInputError when the id was already used for another query."""
        request = think_request_to_pb(params).SerializeToString()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (request_id, request, status, created_at) VALUES (?, ?, ?, ?)",
                (params.request_id, request, PENDING, time.time()),
            )
            record = self._get(params.request_id)
        assert record is not None
        if record.params.query != params.query:
            raise InvalidInputError(f"request_id {params.request_id!r} was already used for a different query")
        return record

    def get(self, request_id: str) -> OutboxRecord | None:
        with self._lock:
            return self._get(request_id)

    def pending(self, limit: int = 100) -> list[OutboxRecord]:
        """Pending records, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE status = ? ORDER BY created_at, rowid LIMIT ?", (PENDING, limit)
            ).fetchall()
        return [_record(row) for row in rows]

    def mark_delivered(self, request_id: str, completed: Event) -> None:
        if completed.kind is not EventKind.COMPLETED:
            raise InvalidInputError(f"mark_delivered needs a COMPLETED event, got {completed.kind.value}")
        u = completed.usage
        self._update(
            request_id,
            "status = ?, delivered_at = ?, session_id = ?, answer = ?,"
            " input_tokens = ?, reasoning_tokens = ?, output_tokens = ?, cached_tokens = ?",
            (
                DELIVERED,
                time.time(),
                completed.session_id,
                completed.text,
                u.input_tokens,
                u.reasoning_tokens,
                u.output_tokens,
                u.cached_tokens,
            ),
        )

    def mark_failed(self, request_id: str, failure: str) -> None:
        """The cloud refused the request for good; it will not be retried."""
        self._update(request_id, "status = ?, failure = ?", (FAILED, failure))

    def record_attempt(self, request_id: str, error: str) -> None:
        self._update(request_id, "attempts = attempts + 1, last_error = ?", (error,))

    def depth(self) -> int:
        """How many records are pending."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE status = ?", (PENDING,)).fetchone()
        return int(count)

    def _update(self, request_id: str, assignments: str, values: tuple[object, ...]) -> None:
        with self._lock:
            changed = self._db.execute(
                f"UPDATE outbox SET {assignments} WHERE request_id = ?", (*values, request_id)
            ).rowcount
        if changed == 0:
            raise NotFoundError(f"no outbox record {request_id!r}")

    def _get(self, request_id: str) -> OutboxRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE request_id = ?", (request_id,)).fetchone()
        return _record(row) if row is not None else None


def _record(row: tuple) -> OutboxRecord:
    (
        request_id,
        request,
        status,
        attempts,
        last_error,
        created_at,
        delivered_at,
        session_id,
        answer,
        input_tokens,
        reasoning_tokens,
        output_tokens,
        cached_tokens,
        failure,
    ) = row
    usage = None
    if input_tokens is not None:
        usage = Usage(input_tokens, reasoning_tokens, output_tokens, cached_tokens)
    return OutboxRecord(
        request_id=request_id,
        params=think_request_from_pb(pb.ThinkRequest.FromString(request)),
        status=status,
        attempts=attempts,
        last_error=last_error,
        created_at=created_at,
        delivered_at=delivered_at,
        session_id=session_id,
        answer=answer,
        usage=usage,
        failure=failure,
    )


class OutboxDeliverer:
    """Delivers pending records every ``interval_s``; while the cloud is unreachable the
    pause doubles up to ``max_backoff_s`` (with jitter)."""

    def __init__(
        self,
        outbox: OutboxStorage,
        client: CloudReasoner,
        *,
        interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
        on_delivered: Callable[[OutboxRecord], None] | None = None,
    ) -> None:
        if interval_s <= 0 or max_backoff_s < interval_s:
            raise ConfigError("interval_s must be > 0 and max_backoff_s >= interval_s")
        self.outbox = outbox
        self.client = client
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.on_delivered = on_delivered
        self.unreachable_rounds = 0
        """Consecutive rounds that stopped because the cloud could not be reached."""
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="outbox-deliverer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _pause_s(self) -> float:
        if self.unreachable_rounds == 0:
            return self.interval_s
        backoff = min(self.max_backoff_s, self.interval_s * 2**self.unreachable_rounds)
        return random.uniform(self.interval_s, backoff)

    async def _run(self) -> None:
        while True:
            try:
                await self.deliver_once()
            except Exception:
                log.exception("outbox delivery round failed")
            await asyncio.sleep(self._pause_s())

    async def deliver_once(self) -> int:
        """Deliver every pending record the cloud takes; returns how many were delivered.

        Stops at the first record the cloud cannot take now (unreachable, busy,
        bad token): the others would fail the same way.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # the background loop and an eager caller never deliver twice at once
            delivered = 0
            seen: set[str] = set()
            while batch := [r for r in self.outbox.pending() if r.request_id not in seen]:
                for record in batch:
                    seen.add(record.request_id)
                    outcome = await self._deliver(record)
                    if outcome is None:
                        self.unreachable_rounds += 1
                        return delivered
                    delivered += outcome
            self.unreachable_rounds = 0
            return delivered

    async def _deliver(self, record: OutboxRecord) -> int | None:
        """1 delivered, 0 settled otherwise (failed for good), None: the cloud cannot take it now."""
        request_id = record.request_id
        final: Event | None = None
        try:
            async with contextlib.aclosing(self.client.think(record.params)) as events:
                async for event in events:
                    if event.kind.terminal:
                        final = event
                        break
        except (InvalidInputError, NotFoundError) as exc:
            self.outbox.mark_failed(request_id, str(exc))
            log.warning("outbox: %s refused for good: %s", request_id, exc)
            return 0
        except EdgecloudError as exc:  # unavailable, busy, a bad token: the cloud cannot take it now
            self.outbox.record_attempt(request_id, f"{type(exc).__name__}: {exc}")
            log.info("outbox: %s not delivered yet: %s", request_id, exc)
            return None
        if final is None:  # think() promises a terminal event; count it as an attempt if not
            self.outbox.record_attempt(request_id, "the stream ended without a terminal event")
            return None
        if final.kind is EventKind.FAILED:
            failure = final.failure
            # Retrying the same request_id finds the same failed session: this is final.
            self.outbox.mark_failed(request_id, f"{failure.code}: {failure.message}" if failure else "FAILED")
            log.warning("outbox: %s failed in the cloud: %s", request_id, failure)
            return 0
        self.outbox.mark_delivered(request_id, final)
        delivered = self.outbox.get(request_id)
        if delivered is not None and self.on_delivered is not None:
            try:
                self.on_delivered(delivered)
            except Exception:
                log.exception("outbox: on_delivered callback failed for %s", request_id)
        return 1
