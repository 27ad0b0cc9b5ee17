"""What the Reasoner needs from durable session storage, and the records it stores.

:class:`SessionStorage` is what one replica needs: a session written when it is accepted, while it
runs (its new events, in batches: :class:`Checkpoint`) and when it ends; after a restart, finished
sessions are served from it and unfinished ones continue from what they had streamed
(:class:`Progress`). :class:`SharedSessionStorage` adds what replicas sharing one store need: a
lease on each running session (a dead replica's sessions are claimed by another and continue from
their stored text), events readable by any replica as they are written, cancellation and
per-device counts across replicas.

The embedded SQLite store (:mod:`.sqlite_store`) is the first kind, the Redis store
(:mod:`.redis_store`) the second.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from edgecloud.shared.reasoner.session import Event, SessionInfo, ThinkParams

__all__ = ["Checkpoint", "Progress", "RequestTaken", "SessionStorage", "SharedSessionStorage", "StoredSession"]


class RequestTaken(Exception):
    """``accept`` found the device's request id already accepted (by this replica or another)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"the request was accepted before as session {session_id}")
        self.session_id = session_id


@dataclass(frozen=True)
class StoredSession:
    session_id: str
    params: ThinkParams
    budget: int
    accepted: Event
    created_at: float
    info: SessionInfo | None
    """None while unfinished."""


@dataclass(frozen=True)
class Checkpoint:
    """What an unfinished session streamed since its previous checkpoint, and its counts so far."""

    session_id: str
    events: tuple[Event, ...]
    """The new events, in ``seq`` order, following the stored ones without a gap."""
    reasoning_tokens: int = 0
    """Reasoning tokens generated in all, as of the last of ``events``."""
    answer_tokens: int = 0
    """Answer tokens generated in all, as of the last of ``events``."""
    hidden_reasoning: str = ""
    """Reasoning text that no event carries (the session hides its reasoning), generated since the
    previous checkpoint."""


@dataclass(frozen=True)
class Progress:
    """How far an unfinished session got by its last checkpoint: what a restart continues from."""

    events: list[Event]
    """Its log so far, from the ACCEPTED event on (empty for an unknown session)."""
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    hidden_reasoning: str = ""
    """All the hidden reasoning text so far."""


@runtime_checkable
class SessionStorage(Protocol):
    """What :class:`~edgecloud.cloud.sessions.SessionManager` needs from durable storage.

    :class:`~.sqlite_store.SessionStore` (SQLite, one file per replica) is the embedded one;
    :class:`SharedSessionStorage` extends this for replicas that share one store. Every method may
    be called from any thread. ``accept`` raises :class:`RequestTaken` when ``params.request_id``
    was accepted before for ``params.device_id`` (the manager checks ``find_request`` first; the
    store is the last guard, and the only one between replicas). Request ids are scoped per device.
    """

    def accept(self, session_id: str, params: ThinkParams, budget: int, accepted: Event) -> None:
        """Record an accepted session, its log started with ``accepted``, before the caller is told it exists."""

    def append(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Add each checkpoint to its unfinished session, all in one transaction (a finished or
        forgotten session's checkpoint is ignored: its final log is already written)."""

    def finish(self, info: SessionInfo, events: list[Event]) -> None:
        """Record a session's final state and its whole event log, atomically."""

    def expire(self, finished_before: float) -> int:
        """Forget sessions that finished before this time (unfinished ones never); how many."""

    def get(self, session_id: str) -> StoredSession | None:
        """The session, finished or not; None for an id never accepted (or expired)."""

    def find_request(self, request_id: str, device_id: str = "") -> StoredSession | None:
        """The session accepted for that device's request id, or None: what makes a retry idempotent."""

    def events(self, session_id: str) -> list[Event]:
        """A session's stored events in ``seq`` order: all of a finished one's, an unfinished one's so far."""

    def progress(self, session_id: str) -> Progress:
        """An unfinished session's events and counts as of its last checkpoint."""

    def unfinished(self) -> Iterator[StoredSession]:
        """Sessions accepted and not finished: what a restart continues."""

    def completed(self, limit: int) -> Iterator[StoredSession]:
        """The most recently finished sessions, newest first, at most ``limit``."""

    def close(self) -> None:
        """Release the storage; no method may be called afterwards."""


@runtime_checkable
class SharedSessionStorage(SessionStorage, Protocol):
    """A store that several Reasoner replicas share.

    Each replica names itself (``replica``). ``accept`` leases the new session to it; it renews the
    leases of the sessions it runs (:meth:`renew`) every few seconds. A session whose lease ran out
    (its replica died) is claimed by another replica (:meth:`claim_orphans`), which continues it
    from its stored events. Writes of a session leased to another replica are ignored (a replica
    that was cut off and lost its lease cannot write a second future over the first).
    """

    replica: str
    """This replica's name: the owner of the leases it takes."""
    lease_s: float
    """How long a lease lasts without renewal: how long a dead replica's sessions wait."""

    def renew(self, session_ids: Collection[str]) -> set[str]:
        """Extend this replica's leases on ``session_ids``; returns the ones another replica holds now
        (stop running them)."""

    def claim_orphans(self, limit: int) -> list[StoredSession]:
        """Unfinished sessions whose lease ran out, now leased to this replica (at most ``limit``)."""

    def release(self, session_ids: Collection[str]) -> None:
        """Give up this replica's leases at once (a graceful drain): others claim them at their next look."""

    async def read_events(self, session_id: str, after_seq: int, *, wait_s: float) -> list[Event]:
        """The stored events with seq > ``after_seq``, waiting up to ``wait_s`` when there is none yet."""

    async def aclose(self) -> None:
        """Close what :meth:`read_events` opened on the running loop (before the loop ends)."""

    def request_cancel(self, session_id: str) -> None:
        """Ask the replica running ``session_id`` to cancel it (until the session ends)."""

    def cancel_requests(self) -> set[str]:
        """The unfinished sessions clients asked to cancel, on any replica."""

    def open_sessions(self, device_id: str) -> int:
        """Unfinished sessions of ``device_id`` across all replicas."""

    def ping(self) -> None:
        """Return when the store answers; raise when it cannot be reached."""
